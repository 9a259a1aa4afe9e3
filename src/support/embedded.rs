//! The embedded agent: answers from the knowledge base, offline, streamed
//! word by word like a model would. It uses no tokens and no network.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::knowledge::{terms, KnowledgeBase};
use super::provider::{
    stream_words, ProviderError, ReplyRequest, ReplySink, SupportProvider, SupportTools,
};

pub struct EmbeddedProvider {
    knowledge: KnowledgeBase,
    word_delay: Duration,
}

const GREETING: &str = "Hi! I'm Mixroom's support assistant. I can help with cancelling or \
rescheduling a booking, refunds, payments, studio rules, and your account and privacy. \
What can I do for you?";

const THANKS: &str = "You're welcome! Is there anything else I can help you with?";

const NO_MATCH: &str = "I'm sorry, I couldn't find anything in Mixroom's help articles that \
answers that. I can help with cancelling or rescheduling a booking, refunds, payments, studio \
rules, and your account and privacy. If you'd like a person from the Mixroom support team to \
look into it, just say \"talk to a human\".";

const FOLLOW_UP: &str = "Did that answer your question? If not, say \"talk to a human\" and a \
person from the Mixroom support team will join.";

impl EmbeddedProvider {
    pub fn new(knowledge: KnowledgeBase, word_delay: Duration) -> Self {
        EmbeddedProvider {
            knowledge,
            word_delay,
        }
    }

    /// The whole answer to `question`.
    pub fn answer(&self, question: &str) -> String {
        if let Some(article) = self.knowledge.best_match(question) {
            return format!("{}\n\n{FOLLOW_UP}", article.answer.trim());
        }
        let lower = question.to_lowercase();
        // Small talk has no topic words; recognise it before giving up.
        if terms(question).len() <= 1 {
            let said = |words: &[&str]| {
                words.iter().any(|w| {
                    lower
                        .split(|c: char| !c.is_alphanumeric())
                        .any(|word| word == *w)
                })
            };
            if said(&["thanks", "thank", "thx", "cheers"]) {
                return THANKS.to_owned();
            }
            if said(&["hi", "hello", "hey", "hiya", "morning", "evening"]) {
                return GREETING.to_owned();
            }
        }
        NO_MATCH.to_owned()
    }
}

impl SupportProvider for EmbeddedProvider {
    fn reply<'a>(
        &'a self,
        request: &'a ReplyRequest,
        _tools: &'a dyn SupportTools,
        sink: &'a mut dyn ReplySink,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let answer = self.answer(request.question());
            stream_words(sink, &answer, self.word_delay).await;
            Ok(())
        })
    }

    fn uses_tokens(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> EmbeddedProvider {
        EmbeddedProvider::new(KnowledgeBase::built_in().unwrap(), Duration::ZERO)
    }

    #[test]
    fn answers_from_the_matching_article() {
        let answer = provider().answer("How can I cancel my session?");
        assert!(answer.contains("cancel"), "{answer}");
        assert!(answer.contains("talk to a human"), "{answer}");
    }

    #[test]
    fn says_when_it_does_not_know_and_offers_a_person() {
        let answer = provider().answer("What's the best microphone for trumpet?");
        assert_eq!(answer, NO_MATCH);
        assert_eq!(provider().answer("Hello!"), GREETING);
        assert_eq!(provider().answer("thanks"), THANKS);
    }
}
