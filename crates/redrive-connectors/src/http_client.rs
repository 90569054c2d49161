//! The one way redrive builds an HTTP client (the `http` step, Kusto, the queues): its
//! timeouts, and redirects followed only to the same origin.
//!
//! A plan's headers carry secrets (`Auth-Token = "${TOKEN}"`, `x-api-key`). On a redirect to
//! another origin reqwest drops `Authorization` and cookies but sends every other header again,
//! so a `307` to another host would hand it the plan's token. redrive does not follow such a
//! redirect: the caller gets the 3xx answer and fails the item, naming where it pointed.

use std::time::Duration;

use reqwest::redirect::{Attempt, Policy};

/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most redirects followed for one request (all within its origin).
const MAX_REDIRECTS: usize = 10;

/// A client whose requests time out after `timeout` and follow same-origin redirects only.
pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(Policy::custom(same_origin))
        .build()
        // Only a TLS back end that cannot start fails here; the fallback still follows no
        // redirect elsewhere.
        .unwrap_or_else(|_| {
            reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap_or_default()
        })
}

fn same_origin(attempt: Attempt<'_>) -> reqwest::redirect::Action {
    if attempt.previous().len() > MAX_REDIRECTS {
        return attempt.error("too many redirects");
    }
    let next = attempt.url();
    let same = attempt.previous().last().is_some_and(|previous| {
        previous.scheme() == next.scheme()
            && previous.host_str() == next.host_str()
            && previous.port_or_known_default() == next.port_or_known_default()
    });
    if same {
        attempt.follow()
    } else {
        attempt.stop()
    }
}

/// What to say of a redirect the client did not follow: where it pointed, and why not.
pub(crate) fn unfollowed_redirect(response: &reqwest::Response) -> Option<String> {
    if !response.status().is_redirection() {
        return None;
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or("nowhere");
    Some(format!(
        "it redirects to `{}`, another origin: redrive does not follow it, so the step's headers (tokens, keys) are not sent there; if that address is to be trusted, point the step's `url` at it",
        redrive_core::secrets::redact(location)
    ))
}
