//! The embedded agent's knowledge base: articles from a TOML file and a
//! small keyword retrieval over them. Deliberately simple and predictable:
//! a question matches an article when its significant words hit the
//! article's title or keywords, weighted by how rare each word is across
//! articles; a weak or missing match is reported as none, so the agent can
//! say it does not know instead of answering beside the point.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use super::SupportError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Article {
    pub id: String,
    pub title: String,
    /// Words and phrases people use for this topic.
    pub keywords: Vec<String>,
    pub answer: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnowledgeFile {
    article: Vec<Article>,
}

/// Words of an article, by strength of the evidence they give.
struct ArticleTerms {
    /// From the title and keywords.
    strong: HashSet<String>,
    /// From the answer text.
    weak: HashSet<String>,
}

pub struct KnowledgeBase {
    articles: Vec<Article>,
    terms: Vec<ArticleTerms>,
    /// In how many articles each term appears at all.
    article_frequency: HashMap<String, usize>,
}

/// A question needs at least this score (one strong, fairly specific hit)
/// to count as answered by an article.
const MIN_SCORE: f64 = 2.0;
const STRONG_WEIGHT: f64 = 3.0;
const WEAK_WEIGHT: f64 = 0.5;

/// Words that carry no topic.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "again", "all", "am", "an", "and", "any", "anyone", "are", "as", "at",
    "be", "been", "before", "being", "but", "by", "can", "could", "did", "do", "does", "doing",
    "for", "from", "get", "got", "had", "has", "have", "hello", "help", "hey", "hi", "how", "i",
    "if", "im", "in", "into", "is", "it", "its", "just", "know", "like", "me", "mixroom", "my",
    "need", "no", "not", "now", "of", "on", "one", "or", "our", "out", "please", "so", "some",
    "than", "thank", "thanks", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "to", "up", "us", "want", "was", "way", "we", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "would", "you", "your",
];

/// Lower-cased words of at least two letters or digits.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
}

/// A light suffix-stripping stemmer, enough for "cancel", "cancelled",
/// "cancellation" and "cancelling" to meet.
pub fn stem(word: &str) -> String {
    let mut stem = word.to_owned();
    for suffix in [
        "ations", "ation", "ments", "ment", "ings", "ing", "ies", "ied", "ed", "es", "s", "ly", "e",
    ] {
        if stem.len() > suffix.len() + 2 && stem.ends_with(suffix) {
            stem.truncate(stem.len() - suffix.len());
            if suffix == "ies" || suffix == "ied" {
                stem.push('y');
            }
            break;
        }
    }
    // "cancell" → "cancel", "stopp" → "stop"
    let bytes = stem.as_bytes();
    if bytes.len() > 3 && bytes[bytes.len() - 1] == bytes[bytes.len() - 2] {
        let last = bytes[bytes.len() - 1];
        if !b"aeiousz".contains(&last) {
            stem.pop();
        }
    }
    stem
}

/// The significant stems of a text.
pub fn terms(text: &str) -> HashSet<String> {
    words(text)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

impl KnowledgeBase {
    /// The articles shipped in `config/support_kb.toml`, compiled in.
    pub fn built_in() -> Result<Self, SupportError> {
        Self::parse(BUILT_IN)
            .map_err(|e| SupportError::Setup(format!("built-in knowledge base: {e}")))
    }

    pub fn load(path: &Path) -> Result<Self, SupportError> {
        let raw = std::fs::read_to_string(path).map_err(|e| {
            SupportError::Setup(format!(
                "cannot read knowledge base {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&raw)
            .map_err(|e| SupportError::Setup(format!("knowledge base {}: {e}", path.display())))
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let file: KnowledgeFile = toml::from_str(raw).map_err(|e| e.to_string())?;
        if file.article.is_empty() {
            return Err("no [[article]] entries".into());
        }
        Ok(Self::new(file.article))
    }

    pub fn new(articles: Vec<Article>) -> Self {
        let terms: Vec<ArticleTerms> = articles
            .iter()
            .map(|article| {
                let mut strong = terms(&article.title);
                for keyword in &article.keywords {
                    strong.extend(terms(keyword));
                }
                ArticleTerms {
                    strong,
                    weak: terms(&article.answer),
                }
            })
            .collect();
        let mut article_frequency = HashMap::new();
        for article in &terms {
            for term in article.strong.union(&article.weak) {
                *article_frequency.entry(term.clone()).or_insert(0) += 1;
            }
        }
        KnowledgeBase {
            articles,
            terms,
            article_frequency,
        }
    }

    pub fn articles(&self) -> &[Article] {
        &self.articles
    }

    /// The article that answers `question`, if one matches well enough.
    pub fn best_match(&self, question: &str) -> Option<&Article> {
        let question = terms(question);
        let count = self.articles.len() as f64;
        let mut best: Option<(usize, f64)> = None;
        for (index, article) in self.terms.iter().enumerate() {
            let mut score = 0.0;
            let mut strong_hits = 0;
            for term in &question {
                let frequency = self.article_frequency.get(term).copied().unwrap_or(0) as f64;
                // Rare words say more about the topic than common ones.
                let rarity = ((count + 1.0) / (frequency + 0.5)).ln().max(0.1);
                if article.strong.contains(term) {
                    score += STRONG_WEIGHT * rarity;
                    strong_hits += 1;
                } else if article.weak.contains(term) {
                    score += WEAK_WEIGHT * rarity;
                }
            }
            if strong_hits > 0 && score >= MIN_SCORE && best.is_none_or(|(_, s)| score > s) {
                best = Some((index, score));
            }
        }
        best.map(|(index, _)| &self.articles[index])
    }
}

const BUILT_IN: &str = include_str!("../../config/support_kb.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> KnowledgeBase {
        KnowledgeBase::built_in().expect("the shipped knowledge base loads")
    }

    #[test]
    fn stems_meet() {
        for word in [
            "cancel",
            "cancelled",
            "cancellation",
            "cancelling",
            "cancels",
        ] {
            assert_eq!(stem(word), "cancel", "{word}");
        }
        assert_eq!(stem("refunds"), stem("refunded"));
        assert_eq!(stem("charged"), stem("charge"));
        assert_eq!(stem("rescheduling"), stem("reschedule"));
    }

    #[test]
    fn shipped_articles_cover_the_topics() {
        let kb = shipped();
        let ids: Vec<&str> = kb.articles().iter().map(|a| a.id.as_str()).collect();
        for topic in [
            "cancellation",
            "refunds",
            "payments",
            "rescheduling",
            "studio-rules",
            "account-privacy",
        ] {
            assert!(ids.contains(&topic), "missing article {topic}: {ids:?}");
        }
    }

    #[test]
    fn questions_find_their_article() {
        let kb = shipped();
        for (question, expected) in [
            ("How do I cancel my booking?", "cancellation"),
            ("I need to cancel tomorrow's session", "cancellation"),
            ("Can I get a refund?", "refunds"),
            ("When will I get my money back?", "refunds"),
            ("Why was I charged twice?", "payments"),
            ("My card payment failed", "payments"),
            ("Can I move my session to another day?", "rescheduling"),
            ("I want to reschedule", "rescheduling"),
            (
                "Can I bring food and drinks into the studio?",
                "studio-rules",
            ),
            ("How do I delete my account?", "account-privacy"),
            ("Do you use my chats to train AI?", "account-privacy"),
        ] {
            let found = kb.best_match(question).map(|a| a.id.as_str());
            assert_eq!(found, Some(expected), "{question}");
        }
    }

    #[test]
    fn unrelated_questions_find_nothing() {
        let kb = shipped();
        for question in [
            "What's the weather in Paris?",
            "Tell me a joke",
            "hello",
            "What is the capital of Peru?",
        ] {
            assert!(
                kb.best_match(question).is_none(),
                "{question} matched {:?}",
                kb.best_match(question).map(|a| &a.id)
            );
        }
    }
}
