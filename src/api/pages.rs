//! The web pages of `web/` (player, "SIP as stream" call page, index), compiled into the
//! binary so the gateway serves them from any working directory with no build step. They
//! are plain files: edit them in `web/` and rebuild.

use actix_web::{web, HttpResponse};

/// (URL path, file, content type).
const FILES: &[(&str, &str, &str)] = &[
    ("/", include_str!("../../web/index.html"), HTML),
    ("/index.html", include_str!("../../web/index.html"), HTML),
    ("/player.html", include_str!("../../web/player.html"), HTML),
    ("/call.html", include_str!("../../web/call.html"), HTML),
    ("/hls.html", include_str!("../../web/hls.html"), HTML),
    (
        "/css/style.css",
        include_str!("../../web/css/style.css"),
        "text/css; charset=utf-8",
    ),
    ("/js/whep.js", include_str!("../../web/js/whep.js"), JS),
    ("/js/player.js", include_str!("../../web/js/player.js"), JS),
    ("/js/call.js", include_str!("../../web/js/call.js"), JS),
    ("/js/index.js", include_str!("../../web/js/index.js"), JS),
    ("/js/hls.js", include_str!("../../web/js/hls.js"), JS),
    // hls.js (Apache-2.0), see web/vendor/README.md.
    (
        "/vendor/hls.light.min.js",
        include_str!("../../web/vendor/hls.light.min.js"),
        JS,
    ),
];
const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

pub fn routes(cfg: &mut web::ServiceConfig) {
    for &(path, body, content_type) in FILES {
        cfg.route(
            path,
            web::get().to(move || async move {
                HttpResponse::Ok()
                    .content_type(content_type)
                    .insert_header(("Cache-Control", "no-cache"))
                    .body(body)
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_page_links_only_files_that_are_served() {
        for &(_, body, _) in super::FILES {
            for part in body.split(['"', '\'']) {
                if (part.starts_with("js/")
                    || part.starts_with("css/")
                    || part.starts_with("vendor/"))
                    && !part.contains(' ')
                {
                    let url = format!("/{part}");
                    assert!(
                        super::FILES.iter().any(|(p, _, _)| *p == url),
                        "{url} is linked but not served"
                    );
                }
            }
        }
    }
}
