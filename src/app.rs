//! Assembly: starts the actors, hands each part the handles it uses (the
//! routes get the whole [`AppState`]), serves HTTP and WebSockets, and
//! shuts down in order on SIGTERM.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_http::HttpService;
use actix_service::{fn_service, map_config, IntoServiceFactory, Service, ServiceFactoryExt};
use actix_web::dev::AppConfig;
use actix_web::{web, App};
use secrecy::ExposeSecret;
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::bookings::{BookingReminders, Bookings};
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::db::client_reads::ClientReads;
use crate::db::Db;
use crate::http::AppState;
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::notifications::Inbox;
use crate::notify::announcer::{Announcements, Announcer, AnnouncerWork};
use crate::notify::digest::Composer;
use crate::notify::reminders::Reminders;
use crate::rooms::hub::{CloseAllSessions, Hub, UseCluster};
use crate::rooms::sequencer::Sequencer;
use crate::support::SupportServices;

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let applied = Db::migrate(&settings.database.url).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "migrations applied");
    }
    let db = Db::connect(&settings.database.url, settings.database.pool_size).await?;
    db.ping().await?;
    let verifier = Arc::new(TokenVerifier::start(&settings.auth).await?);
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(
        db.clone(),
        Duration::from_millis(settings.server.room_idle_ms),
        metrics.clone(),
    )
    .start();
    let redis_url = settings.broker.redis_url.expose_secret();
    let cluster = if redis_url.is_empty() {
        Cluster::single_node()
    } else {
        let lease = Duration::from_millis(settings.broker.presence_lease_ms);
        let cluster = Cluster::connect(&settings.broker, lease, hub.clone().recipient())
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach Redis at broker.redis_url: {e}"))?;
        hub.do_send(UseCluster(cluster.clone()));
        cluster
    };
    // SQLite takes one writer at a time: more writers would only queue.
    let writers = match &db {
        Db::Postgres(_) => settings.database.writers,
        Db::Sqlite(..) => 1,
    };
    let sequencer = Sequencer::start(
        db.clone(),
        settings.database.max_batch,
        writers,
        hub.clone().recipient(),
        metrics.clone(),
    );
    let limiters = Arc::new(Limiters::new(&settings.limits));
    let email = crate::notify::start(settings.clone(), db.clone(), hub.clone(), metrics.clone())?;
    let support_runtime = crate::support::SupportRuntime::load(&settings.ai)?;
    let web_push =
        crate::notify::push::start(settings.clone(), db.clone(), hub.clone(), metrics.clone())
            .await?;
    let inbox = Inbox::new(hub.clone(), email.notifier, web_push.clone());
    let announcer = Announcer::new(
        AnnouncerWork {
            db: db.clone(),
            inbox: inbox.clone(),
            mailer: email.mailer,
            composer: Arc::new(Composer::from_settings(&settings)),
            metrics: metrics.clone(),
            page_size: settings.notify.announcement_page_size,
            node: uuid::Uuid::new_v4().to_string(),
        },
        Duration::from_millis(settings.email.sweep_interval_ms),
    )
    .start();
    let support = crate::support::start(
        SupportServices {
            ai: settings.ai.clone(),
            db: db.clone(),
            hub: hub.clone(),
            sequencer: sequencer.clone(),
            limiters: limiters.clone(),
            metrics: metrics.clone(),
            inbox: inbox.clone(),
        },
        support_runtime,
    );
    let state_metrics = metrics.clone();
    let state = web::Data::new(AppState {
        settings: settings.clone(),
        db: db.clone(),
        client_reads: ClientReads::new(db.clone(), settings.database.pool_size),
        verifier,
        hub: hub.clone(),
        cluster,
        sequencer: sequencer.clone(),
        limiters: limiters.clone(),
        metrics,
        support,
        bookings: Bookings::new(
            db.clone(),
            hub.clone(),
            sequencer.clone(),
            inbox.clone(),
            BookingReminders {
                lead_secs: settings.notify.reminder_lead_secs.clone().into(),
                actor: Reminders::new(
                    db.clone(),
                    inbox.clone(),
                    state_metrics.clone(),
                    Duration::from_millis(settings.email.sweep_interval_ms),
                )
                .start(),
            },
        ),
        announcements: Announcements::new(db.clone(), announcer),
        inbox,
        web_push,
        sockets: TaskTracker::new(),
        probes: crate::http::health::ProbeCache::new(),
        draining: Arc::new(AtomicBool::new(false)),
    });
    let sessions = Arc::new(crate::ws::SessionServices {
        server: settings.server.clone(),
        limits: settings.limits.clone(),
        chat: settings.chat_rules(),
        db: state.db.clone(),
        client_reads: state.client_reads.clone(),
        verifier: state.verifier.clone(),
        hub: state.hub.clone(),
        sequencer: state.sequencer.clone(),
        limiters: state.limiters.clone(),
        metrics: state.metrics.clone(),
        sockets: state.sockets.clone(),
    });
    state.probes.start(db.clone(), state.metrics.clone());

    crate::retention::start(db.clone(), settings.retention.clone());
    let listener = bind(settings.server.listen)?;
    let addr = listener.local_addr()?;
    let server_state = state.clone();
    let connections = Arc::new(crate::limits::ConnectionCap::new(
        &settings.limits,
        state.metrics.clone(),
    ));
    let mut server = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(settings.server.shutdown_grace_ms.div_ceil(1000));
    if let Some(metrics_addr) = settings.server.metrics_listen {
        // Operators scrape from inside: /metrics leaves the public address.
        let metrics_listener = bind(metrics_addr)?;
        let bound = metrics_listener.local_addr()?;
        let metrics_state = state.clone();
        server = server.listen("mixroom-metrics", metrics_listener, move || {
            let app = App::new()
                .app_data(metrics_state.clone())
                .route("/metrics", web::get().to(crate::http::health::metrics));
            HttpService::build()
                .client_request_timeout(Duration::from_secs(5))
                .local_addr(bound)
                .finish(map_config(
                    app.into_factory()
                        .map_err(|error: actix_web::Error| error.error_response()),
                    |_| AppConfig::default(),
                ))
                .tcp()
        })?;
        tracing::info!(addr = %bound, "metrics served");
        println!("metrics listening on {bound}");
    }
    // What `actix_web::HttpServer` assembles, plus an upgrade service:
    // HttpServer offers none, and without one a WebSocket stays inside the
    // HTTP/1 dispatcher with its two 8 KiB buffers for its whole life.
    let server = server.listen("mixroom-realtime", listener, move || {
        let state = server_state.clone();
        let connections = connections.clone();
        let server_settings = &state.settings.server;
        let app = App::new()
            .app_data(state.clone())
            .configure(|cfg| crate::http::routes(cfg, &state.settings))
            .default_service(web::to(crate::http::no_route))
            .wrap(actix_web::middleware::from_fn(
                crate::http::middleware::limit_http,
            ))
            .wrap(actix_web::middleware::from_fn(
                crate::http::middleware::body_deadline,
            ))
            .wrap(actix_web::middleware::from_fn(
                crate::http::request_log::count_requests,
            ))
            // A span per request with a request id: every log line of the
            // request carries it (secret query values redacted).
            .wrap(tracing_actix_web::TracingLogger::<
                crate::http::request_log::RequestSpan,
            >::new())
            .wrap(actix_web::middleware::Condition::new(
                !server_settings.cors_origins.is_empty(),
                crate::http::cors(&server_settings.cors_origins),
            ));
        let upgrade_state = sessions.clone();
        let http = HttpService::build()
            .client_request_timeout(Duration::from_secs(5))
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr(addr)
            .upgrade(fn_service(move |(request, framed)| {
                crate::ws::serve_upgrade(upgrade_state.clone(), request, framed)
            }))
            .finish(map_config(
                app.into_factory()
                    .map_err(|error: actix_web::Error| error.error_response()),
                |_| AppConfig::default(),
            ))
            .tcp();
        // Open HTTP connections per address are capped: beyond the
        // cap a connection is closed at once.
        actix_service::apply_fn_factory(http, move |stream: actix_rt::net::TcpStream, http| {
            let admitted = connections.admit(&stream);
            let served = admitted.is_some().then(|| http.call(stream));
            async move {
                if let Some(served) = served {
                    served.await?;
                }
                drop(admitted);
                Ok(())
            }
        })
    })?;
    tracing::info!(%addr, backend = db.backend_name(), "server started");
    // Operators and tests read this line for the real port.
    println!("listening on {addr}");
    std::io::stdout().flush()?;

    let server = server.run();
    let handle = server.handle();
    let sockets = state.sockets.clone();
    let draining = state.draining.clone();
    let server_settings = settings.server.clone();
    actix::spawn(async move {
        let mut evict = tokio::time::interval(Duration::from_secs(60));
        loop {
            evict.tick().await;
            limiters.evict_idle();
        }
    });
    actix::spawn(async move {
        let signal = wait_for_shutdown_signal().await;
        draining.store(true, Ordering::Relaxed);
        // A person's Ctrl-C stops at once; an orchestrator's SIGTERM drains.
        let (drain, spread) = match signal {
            Signal::Terminate => (
                Duration::from_millis(server_settings.drain_ms),
                Duration::from_millis(server_settings.close_spread_ms),
            ),
            Signal::Interrupt => (Duration::ZERO, Duration::ZERO),
        };
        tracing::info!(
            ?drain,
            ?spread,
            "shutting down: readiness fails, sockets still served"
        );
        tokio::time::sleep(drain).await;
        // No new connections from here on; live sockets close spread out.
        handle.pause().await;
        let closed = hub.send(CloseAllSessions { spread }).await.unwrap_or(0);
        tracing::info!(closed, "closing sessions with 1001");
        tokio::time::sleep(spread).await;
        // Everything accepted before the signal is committed before exit.
        sequencer.flush().await;
        sockets.close();
        let grace = Duration::from_millis(server_settings.shutdown_grace_ms);
        if tokio::time::timeout(grace, sockets.wait()).await.is_err() {
            tracing::warn!(
                open = sockets.len(),
                "sockets still open at the end of the grace"
            );
        }
        handle.stop(true).await;
    });
    server.await?;
    tracing::info!("stopped");
    Ok(())
}

/// The listening socket, with the backlog `HttpServer` would give it (a
/// burst of connects waits in the kernel rather than being refused).
fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

enum Signal {
    Terminate,
    Interrupt,
}

async fn wait_for_shutdown_signal() -> Signal {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => Signal::Terminate,
        _ = int.recv() => Signal::Interrupt,
    }
}
