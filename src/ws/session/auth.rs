//! Authentication of a session: the first `auth`, a fresh token on the
//! live socket, the token's expiry, and the profile its claims mirror.

use super::*;

impl WsSession {
    pub(super) fn authenticate(&mut self, token: &str, ctx: &mut WebsocketContext<Self>) {
        let state = self.state.clone();
        let token = token.to_owned();
        let register = RegisterSession {
            session_id: self.id.clone(),
            user_id: String::new(),
            recipient: ctx.address().recipient(),
            max_sessions: self.state.limits.max_connections_per_user,
        };
        // Verified (a rotated signing key is fetched first), mirrored (an
        // erased user is refused here, so nothing they send can bring their
        // name back), then registered. Frames that follow `auth` wait.
        let admitted = async move {
            let identity = state
                .verifier
                .verify_fresh(&token)
                .await
                .map_err(|error| error.to_string())?;
            match state
                .db
                .mirror_token_profile(
                    &identity.user_id,
                    identity.email.as_deref(),
                    &identity.name,
                    identity.role.as_str(),
                    identity.issued_at,
                )
                .await
            {
                Ok(mirrored) => {
                    if let Some(refusal) = mirrored.refusal() {
                        return Err(refusal.to_owned());
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot mirror token profile"),
            }
            let registered = state
                .hub
                .send(RegisterSession {
                    user_id: identity.user_id.clone(),
                    ..register
                })
                .await;
            Ok((identity, matches!(registered, Ok(true))))
        };
        ctx.wait(
            admitted
                .into_actor(self)
                .map(move |admitted, session, ctx| match admitted {
                    Err(reason) => session.close(ctx, close::AUTH_FAILED, &reason),
                    Ok((_, false)) => {
                        session
                            .state
                            .metrics
                            .connections_refused
                            .with_label_values(&["per_user"])
                            .inc();
                        session.close(ctx, close::POLICY, "too many connections for this user")
                    }
                    Ok((identity, true)) => {
                        session.schedule_expiry(identity.expires_at, ctx);
                        ctx.text(
                            ServerFrame::Welcome {
                                user_id: &identity.user_id,
                                session_id: &session.id,
                                server_time: crate::time::rfc3339_ms(crate::time::now_ms()),
                                heartbeat_ms: session.state.server.heartbeat_ms,
                            }
                            .encode(),
                        );
                        session.send_unread_counts(&identity, ctx);
                        session.identity = Some(identity);
                    }
                }),
        );
    }

    /// `{"type":"unread","notifications":n,"rooms":{"booking:..":k}}` right
    /// after `welcome`, so a client can draw badges without a request.
    /// The count comes back through the mailbox rather than as a future of
    /// the context: a fourth future there would move the context's future
    /// list to the heap for the life of the socket.
    pub(super) fn send_unread_counts(&self, identity: &Identity, ctx: &mut WebsocketContext<Self>) {
        let state = self.state.clone();
        let user_id = identity.user_id.clone();
        let session = ctx.address();
        actix_rt::spawn(async move {
            match crate::notifications::unread_summary(&state.db, &user_id).await {
                Ok(mut summary) => {
                    summary["type"] = "unread".into();
                    session.do_send(ToSession::Event(summary.to_string().into()));
                }
                Err(error) => tracing::warn!(%error, "cannot count unread items"),
            }
        });
    }

    /// A fresh token for the same user extends the session; a token for
    /// another user ends it.
    pub(super) fn refresh_auth(
        &mut self,
        token: &str,
        reference: Option<&str>,
        ctx: &mut WebsocketContext<Self>,
    ) {
        let current = self.identity.as_ref().map(|i| i.user_id.clone());
        let state = self.state.clone();
        let token = token.to_owned();
        let reference = reference.map(str::to_owned);
        let verified = async move { state.verifier.verify_fresh(&token).await };
        ctx.wait(
            verified
                .into_actor(self)
                .map(move |verified, session, ctx| match verified {
                    Ok(identity) if Some(&identity.user_id) == current.as_ref() => {
                        session.schedule_expiry(identity.expires_at, ctx);
                        let expires_at = crate::time::rfc3339_ms(identity.expires_at * 1000);
                        session.remember_profile(&identity);
                        session.identity = Some(identity);
                        ctx.text(ByteString::from(
                            serde_json::json!({
                                "type": "token_refreshed",
                                "ref": reference,
                                "expires_at": expires_at,
                            })
                            .to_string(),
                        ));
                    }
                    Ok(_) => session.close(ctx, close::AUTH_FAILED, "token is for another user"),
                    Err(error) => {
                        session.send_error(ctx, reference.as_deref(), &AppError::from(error))
                    }
                }),
        );
    }

    /// Token claims keep the users mirror current (names for members lists,
    /// addresses for email).
    pub(super) fn remember_profile(&self, identity: &Identity) {
        let db = self.state.db.clone();
        let who = identity.clone();
        actix::spawn(async move {
            if let Err(error) = db
                .mirror_token_profile(
                    &who.user_id,
                    who.email.as_deref(),
                    &who.name,
                    who.role.as_str(),
                    who.issued_at,
                )
                .await
            {
                tracing::warn!(%error, "cannot mirror token profile");
            }
        });
    }

    pub(super) fn schedule_expiry(&mut self, expires_at: i64, ctx: &mut WebsocketContext<Self>) {
        let remaining = (expires_at - crate::time::now_secs()).max(0) as u64;
        self.token_expiry = Some(Instant::now() + Duration::from_secs(remaining));
        self.arm_timer(ctx);
    }
}
