//! `announce`: does an announcement to many users hold up other email?
//!
//! The spawned server emails through a fake Resend served here (it answers
//! every request at once and notes when each email arrived). Probes are
//! transactional notifications to one user (what a confirmation or a
//! reminder is: emailed at once), posted every `--probe-every-ms`; their
//! latency is posting to arrival at the fake. Measured first alone, then
//! while an announcement to `--users` users is notified and emailed; also
//! how long the probes' POSTs took, and the announcement's own pace.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::stats::{now_ns, round, Samples};
use crate::target::{Target, TargetArgs};

#[derive(Args, Debug)]
pub struct AnnounceArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Users mirrored and announced to.
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// Seconds of probing alone, before the announcement.
    #[arg(long, default_value_t = 20.0)]
    pub alone: f64,
    #[arg(long, default_value_t = 500)]
    pub probe_every_ms: u64,
    /// The server's `email.rate_per_sec` (Resend's default limit is 2; a
    /// higher plan allows more).
    #[arg(long, default_value_t = 10)]
    pub email_rate: u32,
}

/// What the fake Resend saw: probes by subject (arrival, ns), and how many
/// announcement emails, when the last came.
#[derive(Default)]
struct Inbox {
    probes: HashMap<String, u64>,
    bulk: u64,
    last_bulk_ns: u64,
}

/// Serves Resend's `/emails` and `/emails/batch` on a loopback port.
async fn fake_resend(inbox: Rc<RefCell<Inbox>>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::task::spawn_local(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let inbox = inbox.clone();
            tokio::task::spawn_local(async move {
                let _ = serve(stream, inbox).await;
            });
        }
    });
    Ok(url)
}

async fn serve(stream: tokio::net::TcpStream, inbox: Rc<RefCell<Inbox>>) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        let arrived = now_ns();
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let emails: Vec<Value> = match parsed {
            Value::Array(emails) => emails,
            one => vec![one],
        };
        {
            let mut inbox = inbox.borrow_mut();
            for email in &emails {
                let subject = email["subject"].as_str().unwrap_or_default();
                if subject.starts_with("probe-") {
                    inbox.probes.insert(subject.to_owned(), arrived);
                } else {
                    inbox.bulk += 1;
                    inbox.last_bulk_ns = arrived;
                }
            }
        }
        let ids: Vec<Value> = emails
            .iter()
            .map(|_| json!({ "id": uuid::Uuid::new_v4().to_string() }))
            .collect();
        let answer = if request_line.contains("/emails/batch") {
            json!({ "data": ids })
        } else {
            ids.into_iter().next().unwrap_or(json!({}))
        }
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        reader.get_mut().write_all(response.as_bytes()).await?;
    }
}

/// Posts a probe now; returns its subject and when it was posted, and
/// records how long the POST took.
async fn post_probe(
    target: &Target,
    user_id: &str,
    subject: String,
    posts: &mut Samples,
) -> anyhow::Result<(String, u64)> {
    let posted = now_ns();
    let response = target
        .internal(reqwest::Method::POST, "notifications")
        .json(&json!({
            "user_id": user_id, "kind": "booking", "title": subject,
            "transactional": true,
        }))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("POST a probe: {}", response.status());
    }
    posts.record_since(posted, now_ns());
    Ok((subject, posted))
}

/// Waits (up to a minute) for the probes' emails; their latencies.
async fn probe_latencies(inbox: &Rc<RefCell<Inbox>>, sent: &[(String, u64)]) -> Samples {
    for _ in 0..600 {
        if sent
            .iter()
            .all(|(s, _)| inbox.borrow().probes.contains_key(s))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut latencies = Samples::with_capacity(sent.len());
    let inbox = inbox.borrow();
    for (subject, posted) in sent {
        if let Some(arrived) = inbox.probes.get(subject) {
            latencies.record_since(*posted, *arrived);
        }
    }
    latencies
}

/// Mirrors `count` users with addresses, 500 a request.
async fn mirror_users(target: &Target, count: usize) -> anyhow::Result<()> {
    let ids: Vec<String> = (0..count)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let chunks: Vec<Vec<Value>> = ids
        .chunks(500)
        .map(|chunk| {
            chunk
                .iter()
                .map(|id| json!({"id": id, "email": format!("{id}@bench.test"), "role": "client"}))
                .collect()
        })
        .collect();
    let mirrored: Vec<anyhow::Result<()>> = futures_util::stream::iter(chunks)
        .map(|users| async move {
            target
                .internal(reqwest::Method::PUT, "users")
                .json(&json!({ "users": users }))
                .send()
                .await?
                .error_for_status()?;
            Ok(())
        })
        .buffer_unordered(4)
        .collect()
        .await;
    if let Some(error) = mirrored.into_iter().find_map(Result::err) {
        bail!("cannot mirror the users: {error:#}");
    }
    Ok(())
}

/// Starts the fake Resend, then the server emailing through it.
pub async fn run(args: &AnnounceArgs) -> anyhow::Result<String> {
    let inbox = Rc::new(RefCell::new(Inbox::default()));
    let resend_url = fake_resend(inbox.clone()).await?;
    let mut target_args = args.target.clone();
    for pair in [
        "MIXROOM__EMAIL__RESEND_API_KEY=re_bench".to_owned(),
        format!("MIXROOM__EMAIL__RESEND_BASE_URL={resend_url}"),
        "MIXROOM__EMAIL__FROM=Mixroom <notify@bench.test>".to_owned(),
        format!("MIXROOM__EMAIL__RATE_PER_SEC={}", args.email_rate),
    ] {
        target_args.server_env.insert(0, pair);
    }
    let target = Target::open(&target_args).await?;
    let result = measure(&target, args, &inbox).await;
    target.shutdown().await;
    result
}

async fn measure(
    target: &Target,
    args: &AnnounceArgs,
    inbox: &Rc<RefCell<Inbox>>,
) -> anyhow::Result<String> {
    if target.raw {
        bail!("announce needs the real server");
    }
    let probe_user = uuid::Uuid::new_v4().to_string();
    target
        .internal(reqwest::Method::PUT, &format!("users/{probe_user}"))
        .json(&json!({"email": "probe@bench.test", "name": "Probe", "role": "client"}))
        .send()
        .await?
        .error_for_status()
        .context("mirror the probe user")?;
    let started = now_ns();
    mirror_users(target, args.users).await?;
    println!(
        "{}",
        json!({"step": "mirrored", "users": args.users,
               "secs": round((now_ns() - started) as f64 / 1e9, 1)})
    );

    // Alone.
    let every = Duration::from_millis(args.probe_every_ms);
    let mut tick = tokio::time::interval(every);
    let mut alone_posts = Samples::with_capacity(1024);
    let mut alone_sent = Vec::new();
    let until = now_ns() + (args.alone * 1e9) as u64;
    let mut n = 0;
    while now_ns() < until {
        tick.tick().await;
        n += 1;
        alone_sent.push(
            post_probe(
                target,
                &probe_user,
                format!("probe-alone-{n}"),
                &mut alone_posts,
            )
            .await?,
        );
    }
    let mut alone = probe_latencies(inbox, &alone_sent).await;

    // With the announcement.
    let id = format!("bench-{}", uuid::Uuid::new_v4());
    let announced = now_ns();
    target
        .internal(reqwest::Method::POST, "announcements")
        .json(
            &json!({"id": id, "title": "Bench announcement", "body": "Hello, everyone.",
                      "kind": "policy", "audience": "all"}),
        )
        .send()
        .await?
        .error_for_status()
        .context("announce")?;
    let mut during_posts = Samples::with_capacity(1024);
    let mut during_sent = Vec::new();
    let mut notified_ns = None;
    let mut n = 0;
    let last_progress = loop {
        tick.tick().await;
        n += 1;
        during_sent.push(
            post_probe(
                target,
                &probe_user,
                format!("probe-during-{n}"),
                &mut during_posts,
            )
            .await?,
        );
        if n % 4 == 0 {
            let progress: Value = target
                .internal(reqwest::Method::GET, &format!("announcements/{id}"))
                .send()
                .await?
                .json()
                .await?;
            if notified_ns.is_none() && progress["state"] == "done" {
                notified_ns = Some(now_ns());
            }
            let all_sent = progress["emailed"] == progress["email_queued"];
            if notified_ns.is_some() && all_sent {
                break progress;
            }
        }
    };
    let emailed_ns = inbox.borrow().last_bulk_ns;
    let mut during = probe_latencies(inbox, &during_sent).await;
    let (alone_s, during_s) = (alone.summary(), during.summary());
    let (alone_p, during_p) = (alone_posts.summary(), during_posts.summary());
    let ratio = |a: f64, b: f64| if a > 0.0 { round(b / a, 2) } else { 0.0 };
    let secs = |ns: u64| round(ns.saturating_sub(announced) as f64 / 1e9, 1);
    let report = json!({
        "backend": target.backend,
        "users": args.users,
        "email_rate_per_sec": args.email_rate,
        "probe_email_ms": {"alone": alone_s.json(), "during": during_s.json(),
                           "p50_ratio": ratio(alone_s.p50, during_s.p50),
                           "p99_ratio": ratio(alone_s.p99, during_s.p99)},
        "probe_post_ms": {"alone": alone_p.json(), "during": during_p.json(),
                          "p99_ratio": ratio(alone_p.p99, during_p.p99)},
        "probes": {"alone": alone_sent.len(), "during": during_sent.len()},
        "announcement": {"all_notified_secs": notified_ns.map(secs),
                         "all_emailed_secs": secs(emailed_ns),
                         "bulk_emails_seen": inbox.borrow().bulk,
                         "progress": last_progress},
    });
    println!("{report}");
    Ok(format!(
        "probe email p99 {} ms alone, {} ms during ({}x); all {} users notified in {} s, emailed in {} s",
        alone_s.p99,
        during_s.p99,
        ratio(alone_s.p99, during_s.p99),
        args.users,
        notified_ns.map(secs).unwrap_or(-1.0),
        secs(emailed_ns)
    ))
}
