//! The agent console: one page, served from assets compiled into the
//! binary (no build step, no CDN — it works offline on loopback). It talks
//! to the same `/api` as any client, with the same bearer token.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse, Scope};

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");
const ICON: &str = include_str!("console/icon.svg");

/// Only our own files run, and only our own origin is reached: injected
/// markup could neither run nor send anything away.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn scope() -> Scope {
    web::scope("/console")
        .route("", web::get().to(index))
        .route("/", web::get().to(index))
        .route("/app.js", web::get().to(script))
        .route("/app.css", web::get().to(style))
        .route("/icon.svg", web::get().to(icon))
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    let mut r = HttpResponse::Ok();
    r.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        // Small files; always current after an upgrade.
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    r.body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

async fn icon() -> HttpResponse {
    asset("image/svg+xml", ICON)
}
