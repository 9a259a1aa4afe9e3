//! The WebSocket endpoint `GET /v1/ws`: one [`session::WsSession`] actor per
//! socket. actix-web-actors is confined to this module, so moving to
//! actix-ws later touches nothing else.

pub mod frames;
pub mod session;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::app::AppState;

pub async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let max_frame = state.settings.server.max_frame_bytes;
    let session = session::WsSession::new(state.into_inner());
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(max_frame)
        .start()
}
