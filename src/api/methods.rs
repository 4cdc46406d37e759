//! The one table of the API's POST methods: the REST routes under `/rest-api` and the
//! JSON-RPC methods of `/ws` are both built from it, so a method added here exists in both
//! with the same validation, the same answer and the same errors.

use std::future::Future;
use std::pin::Pin;

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::{
    calls, inject, media_exchange, media_streams, pull, push, recording, siprec, streams, AppState,
};

pub type MethodFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, ApiError>>>>;

/// A handler taking the request body (JSON bytes; empty for none).
pub type MethodFn = fn(web::Data<AppState>, web::Bytes) -> MethodFuture;

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Method").field("path", &self.path).finish()
    }
}

pub struct Method {
    /// The REST path below `/rest-api`, also the JSON-RPC method name without its `/`.
    pub path: &'static str,
    pub call: MethodFn,
}

macro_rules! with_body {
    ($f:path) => {
        |s, b| -> MethodFuture { Box::pin($f(s, b)) }
    };
}

macro_rules! without_body {
    ($f:path) => {
        |s, _| -> MethodFuture { Box::pin(async move { Ok($f(s).await) }) }
    };
}

pub static METHODS: &[Method] = &[
    Method {
        path: "/call/startup",
        call: with_body!(calls::startup),
    },
    Method {
        path: "/call/terminate",
        call: with_body!(calls::terminate),
    },
    Method {
        path: "/call/answer",
        call: with_body!(calls::answer),
    },
    Method {
        path: "/call/hold",
        call: with_body!(calls::hold),
    },
    Method {
        path: "/call/unhold",
        call: with_body!(calls::unhold),
    },
    Method {
        path: "/call/send_dtmf",
        call: with_body!(calls::send_dtmf),
    },
    Method {
        path: "/call/transfer",
        call: with_body!(calls::transfer),
    },
    Method {
        path: "/call/find",
        call: with_body!(calls::find),
    },
    Method {
        path: "/call/find_all",
        call: with_body!(calls::find_all),
    },
    Method {
        path: "/call/inject_sound",
        call: with_body!(inject::inject_sound),
    },
    Method {
        path: "/call/inject_stream/startup",
        call: with_body!(inject::inject_stream_startup),
    },
    Method {
        path: "/call/inject_stream/terminate",
        call: with_body!(inject::inject_stream_terminate),
    },
    Method {
        path: "/call/inject/stop",
        call: with_body!(inject::stop),
    },
    Method {
        path: "/call/inject/find",
        call: with_body!(inject::find),
    },
    Method {
        path: "/call/stream/startup",
        call: with_body!(media_streams::startup),
    },
    Method {
        path: "/call/stream/stop",
        call: with_body!(media_streams::stop),
    },
    Method {
        path: "/call/stream/find",
        call: with_body!(media_streams::find),
    },
    Method {
        path: "/call/stream/find_all",
        call: without_body!(media_streams::find_all),
    },
    Method {
        path: "/media/send_to_uri",
        call: with_body!(media_exchange::send_to_uri),
    },
    Method {
        path: "/media/fork_to_uri",
        call: with_body!(media_exchange::send_to_uri),
    },
    Method {
        path: "/media/fetch_from_uri",
        call: with_body!(media_exchange::fetch_from_uri),
    },
    Method {
        path: "/media/exchange_from_uri",
        call: with_body!(media_exchange::fetch_from_uri),
    },
    Method {
        path: "/media/terminate",
        call: with_body!(media_exchange::terminate),
    },
    Method {
        path: "/media/pause",
        call: with_body!(media_exchange::pause),
    },
    Method {
        path: "/media/fork_pause",
        call: with_body!(media_exchange::pause),
    },
    Method {
        path: "/media/resume",
        call: with_body!(media_exchange::resume),
    },
    Method {
        path: "/media/fork_resume",
        call: with_body!(media_exchange::resume),
    },
    Method {
        path: "/media/find",
        call: with_body!(media_exchange::find),
    },
    Method {
        path: "/stream/find",
        call: with_body!(streams::find),
    },
    Method {
        path: "/stream/find_all",
        call: without_body!(streams::find_all),
    },
    Method {
        path: "/stream/startRecording",
        call: with_body!(recording::start),
    },
    Method {
        path: "/recorder/startup",
        call: with_body!(recording::start),
    },
    Method {
        path: "/stream/stopRecording",
        call: with_body!(recording::stop),
    },
    Method {
        path: "/recorder/terminate",
        call: with_body!(recording::stop),
    },
    Method {
        path: "/recorder/find_all",
        call: without_body!(recording::find_all),
    },
    Method {
        path: "/siprec/start",
        call: with_body!(siprec::start),
    },
    Method {
        path: "/siprec/pause",
        call: with_body!(siprec::pause),
    },
    Method {
        path: "/siprec/resume",
        call: with_body!(siprec::resume),
    },
    Method {
        path: "/siprec/stop",
        call: with_body!(siprec::stop),
    },
    Method {
        path: "/siprec/find",
        call: with_body!(siprec::find),
    },
    Method {
        path: "/push/startup",
        call: with_body!(push::startup),
    },
    Method {
        path: "/push/terminate",
        call: with_body!(push::terminate),
    },
    Method {
        path: "/push/find",
        call: with_body!(push::find),
    },
    Method {
        path: "/push/find_all",
        call: without_body!(push::find_all),
    },
    Method {
        path: "/stream/token",
        call: with_body!(streams::token),
    },
    Method {
        path: "/pull/startup",
        call: with_body!(pull::startup),
    },
    Method {
        path: "/pull/terminate",
        call: with_body!(pull::terminate),
    },
    Method {
        path: "/pull/find",
        call: with_body!(pull::find),
    },
    Method {
        path: "/pull/find_all",
        call: without_body!(pull::find_all),
    },
];

/// Registers every method as `POST <path>` (inside the `/rest-api` scope).
pub fn routes(cfg: &mut web::ServiceConfig) {
    for m in METHODS {
        cfg.route(m.path, web::post().to(m.call));
    }
}

/// The method for a JSON-RPC name: `call/startup`, `/call/startup` or
/// `/rest-api/call/startup`.
pub fn find(name: &str) -> Option<&'static Method> {
    let name = name.strip_prefix("/rest-api").unwrap_or(name);
    let name = name.strip_prefix('/').unwrap_or(name);
    METHODS.iter().find(|m| &m.path[1..] == name)
}
