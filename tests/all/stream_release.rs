//! Verify before release for streams, against the local gateway: events are released as they
//! authenticate, `[DONE]` and the end only once the stream's receipt verified; a stream an
//! on-path attacker rearranged (every event still authenticates) ends with the receipt's error
//! instead of `[DONE]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::e2ee::RequestBody;
use tower_aci::protocol::Suite;
use tower_aci::receipt::{
    ExchangeRecord, ReceiptClient, ReceiptPolicy, RetryPolicy, StreamVerification, VerifyBeforeReleaseLayer,
};
use tower_aci::{BoxError, ErrorKind, ReceiptFailure};

use crate::support::{Env, Hyper, hyper, layer_client, post};

fn chat_stream() -> Value {
    json!({"model": "demo-model", "stream": true, "messages": [{"role": "user", "content": "a stream whose end waits for its receipt"}]})
}

/// A receipt client over hyper that counts the receipts it fetched.
fn receipts(
    env: &Env,
    fetched: Arc<AtomicUsize>,
) -> ReceiptClient<
    impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<hyper::body::Incoming>,
        Error = hyper_util::client::legacy::Error,
        Future: Send,
    > + Clone
    + Send
    + Sync
    + 'static,
> {
    let counting = ServiceBuilder::new()
        .map_request(move |req: Request<Full<Bytes>>| {
            if req.uri().path().starts_with("/v1/aci/receipts/") {
                fetched.fetch_add(1, Ordering::SeqCst);
            }
            req
        })
        .service::<Hyper>(hyper());
    ReceiptClient::new(counting, env.gw.base_url().parse().unwrap()).retry(RetryPolicy::new(
        3,
        Duration::from_millis(10),
        Duration::from_millis(50),
    ))
}

/// Frame by frame: each frame's bytes with how many receipts had been fetched when it was
/// released, and the error that ended the body.
async fn frames<B>(mut body: B, fetched: &AtomicUsize) -> (Vec<(String, usize)>, Option<BoxError>)
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                out.push((String::from_utf8(f.into_data().unwrap().to_vec()).unwrap(), fetched.load(Ordering::SeqCst)))
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[tokio::test]
async fn stream_events_flow_but_done_waits_for_the_verified_receipt() {
    for suite in Suite::ALL {
        let env = Env::start(suite).await;
        let fetched = Arc::new(AtomicUsize::new(0));
        let svc = ServiceBuilder::new()
            .layer(VerifyBeforeReleaseLayer::new(
                receipts(&env, fetched.clone()),
                env.keys.clone(),
                ReceiptPolicy::new(),
            ))
            .layer(env.layer())
            .service(layer_client());
        let res = svc.oneshot(post(&env.url("/v1/chat/completions"), &chat_stream())).await.unwrap();
        let verification = res.extensions().get::<StreamVerification>().cloned().expect("a stream under verification");
        let record = res.extensions().get::<ExchangeRecord>().cloned().unwrap();
        assert!(verification.receipt().is_none());
        let (frames, err) = frames(Box::pin(res.into_body()), &fetched).await;
        assert!(err.is_none(), "{err:?}");

        let done_at = frames.iter().position(|(f, _)| f == "data: [DONE]\n\n").expect("[DONE] released");
        assert_eq!(done_at, frames.len() - 1, "[DONE] is the last frame");
        let content: Vec<&(String, usize)> = frames.iter().filter(|(f, _)| f.contains("\"content\"")).collect();
        assert!(content.len() >= 2, "{frames:?}");
        // Content events were released before any receipt was fetched; [DONE] only after the
        // receipt was fetched and verified.
        assert!(content.iter().all(|(_, n)| *n == 0), "{frames:?}");
        assert_eq!(frames[done_at].1, 1);
        let verified = verification.receipt().expect("verified before [DONE]");
        assert_eq!(Some(verified.receipt().receipt_id()), record.receipt_id());
        assert_eq!(fetched.load(Ordering::SeqCst), 1);
    }
}

/// Rearrange the gateway's SSE bytes in transit (below the E2EE layer): `edit` gets the events.
fn tampered_client(
    edit: Edit,
) -> impl tower::Service<Request<RequestBody<Full<Bytes>>>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .and_then(move |res: Response<hyper::body::Incoming>| async move {
            let (parts, body) = res.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let is_sse =
                parts.headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            if !is_sse {
                return Ok::<_, BoxError>(Response::from_parts(parts, Full::new(bytes)));
            }
            let text = String::from_utf8(bytes.to_vec())?;
            let mut events: Vec<String> = text.split_inclusive("\n\n").map(str::to_owned).collect();
            edit(&mut events);
            Ok(Response::from_parts(parts, Full::new(Bytes::from(events.concat()))))
        })
        .map_err(Into::<BoxError>::into)
        .service(layer_client())
}

/// A rewrite of the stream's events in transit.
type Edit = fn(&mut Vec<String>);

fn content_events(events: &[String]) -> Vec<usize> {
    events.iter().enumerate().filter(|(_, e)| e.contains("\"content\":\"")).map(|(i, _)| i).collect()
}

/// What an on-path attacker can do to a stream whose events all still authenticate.
const EDITS: [(&str, Edit); 3] = [
    ("drop", |ev| {
        let c = content_events(ev);
        ev.remove(c[1]);
    }),
    ("duplicate", |ev| {
        let c = content_events(ev);
        let dup = ev[c[0]].clone();
        ev.insert(c[0], dup);
    }),
    ("reorder", |ev| {
        let c = content_events(ev);
        ev.swap(c[0], c[1]);
    }),
];

#[tokio::test]
async fn a_rearranged_stream_decrypts_but_ends_with_the_receipt_error_instead_of_done() {
    let edits = EDITS;
    for suite in Suite::ALL {
        let env = Env::start(suite).await;
        for (what, edit) in edits {
            // Every event still authenticates: without the receipt, the stream looks whole.
            let plain = ServiceBuilder::new().layer(env.layer()).service(tampered_client(edit));
            let res = plain.oneshot(post(&env.url("/v1/chat/completions"), &chat_stream())).await.unwrap();
            let body = res.into_body().collect().await.unwrap_or_else(|e| panic!("{what}: {e}")).to_bytes();
            assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"), "{what}");

            // With verify-before-release the content flows, but the body ends with the
            // receipt's response-hash error, never with [DONE].
            let fetched = Arc::new(AtomicUsize::new(0));
            let svc = ServiceBuilder::new()
                .layer(VerifyBeforeReleaseLayer::new(
                    receipts(&env, fetched.clone()),
                    env.keys.clone(),
                    ReceiptPolicy::new(),
                ))
                .layer(env.layer())
                .service(tampered_client(edit));
            let res = svc.oneshot(post(&env.url("/v1/chat/completions"), &chat_stream())).await.unwrap();
            let verification = res.extensions().get::<StreamVerification>().cloned().unwrap();
            let (frames, err) = frames(Box::pin(res.into_body()), &fetched).await;
            let err = err.unwrap_or_else(|| panic!("{what}: the stream must not end cleanly"));
            let err = tower_aci::Error::find(err.as_ref()).expect("ours");
            assert_eq!(err.kind(), ErrorKind::Receipt(ReceiptFailure::ResponseHash), "{what}: {err}");
            assert!(frames.iter().any(|(f, _)| f.contains("\"content\"")), "{what}: events were released");
            assert!(frames.iter().all(|(f, _)| !f.contains("[DONE]")), "{what}: [DONE] withheld");
            assert!(verification.receipt().is_none());
        }
    }
}

/// A stream that fails below (a tampered ciphertext) ends with its own error; no receipt is
/// fetched and nothing held is released.
#[tokio::test]
async fn a_stream_that_fails_to_decrypt_ends_with_its_own_error() {
    let env = Env::start(Suite::X25519).await;
    env.gw.set_fault(Some(aci_test_gateway::Fault::TamperEvent { index: 1 }));
    let fetched = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(VerifyBeforeReleaseLayer::new(receipts(&env, fetched.clone()), env.keys.clone(), ReceiptPolicy::new()))
        .layer(env.layer())
        .service(layer_client());
    let res = svc.oneshot(post(&env.url("/v1/chat/completions"), &chat_stream())).await.unwrap();
    let (frames, err) = frames(Box::pin(res.into_body()), &fetched).await;
    let err = err.expect("decryption fails");
    assert_eq!(tower_aci::Error::find(err.as_ref()).map(tower_aci::Error::kind), Some(ErrorKind::Decrypt));
    assert!(frames.iter().all(|(f, _)| !f.contains("[DONE]")));
    assert_eq!(fetched.load(Ordering::SeqCst), 0);
}

/// What the holding layer answers over the tampering client.
type Held = Response<tower_aci::receipt::ReleaseBody<tower_aci::e2ee::ResponseBody<Full<Bytes>>>>;

/// The layer in the mode that holds the whole stream until its receipt verified.
fn holding_svc(
    env: &Env,
    fetched: Arc<AtomicUsize>,
    max_held: usize,
    edit: Option<Edit>,
) -> tower::util::BoxService<Request<Full<Bytes>>, Held, BoxError> {
    let edit = edit.unwrap_or(|_| {});
    tower::util::BoxService::new(
        ServiceBuilder::new()
            .layer(
                VerifyBeforeReleaseLayer::new(receipts(env, fetched), env.keys.clone(), ReceiptPolicy::new())
                    .hold_whole_stream(max_held),
            )
            .layer(env.layer())
            .service(tampered_client(edit)),
    )
}

/// A stream whose receipt fails (an on-path attacker dropped, duplicated or reordered events,
/// each of which still authenticates): in the holding mode the caller gets no byte of content,
/// the body's first frame is the receipt's error.
#[tokio::test]
async fn holding_the_whole_stream_releases_nothing_when_the_receipt_fails() {
    let edits = EDITS;
    for suite in Suite::ALL {
        let env = Env::start(suite).await;
        for (what, edit) in edits {
            let fetched = Arc::new(AtomicUsize::new(0));
            let svc = holding_svc(&env, fetched.clone(), 1 << 20, Some(edit));
            let res = svc.oneshot(post(&env.url("/v1/chat/completions"), &chat_stream())).await.unwrap();
            let verification = res.extensions().get::<StreamVerification>().cloned().unwrap();
            let (frames, err) = frames(Box::pin(res.into_body()), &fetched).await;
            assert!(frames.is_empty(), "attack succeeded ({what}): content released before the receipt: {frames:?}");
            let err = err.unwrap_or_else(|| panic!("{what}: the stream must not end cleanly"));
            let err = tower_aci::Error::find(err.as_ref()).expect("ours");
            assert_eq!(err.kind(), ErrorKind::Receipt(ReceiptFailure::ResponseHash), "{what}: {err}");
            assert_eq!(fetched.load(Ordering::SeqCst), 1, "{what}: the receipt was fetched once");
            assert!(verification.receipt().is_none());
        }
    }
}

/// With a valid receipt, the whole stream arrives, in order and byte for byte what the default
/// mode releases, and no frame before the receipt was fetched and verified.
#[tokio::test]
async fn holding_the_whole_stream_releases_it_in_order_once_the_receipt_verified() {
    for suite in Suite::ALL {
        let env = Env::start(suite).await;
        let fetched = Arc::new(AtomicUsize::new(0));
        let svc = holding_svc(&env, fetched.clone(), 1 << 20, None);
        let res = svc.oneshot(post(&env.url("/v1/chat/completions"), &chat_stream())).await.unwrap();
        let verification = res.extensions().get::<StreamVerification>().cloned().unwrap();
        let (frames, err) = frames(Box::pin(res.into_body()), &fetched).await;
        assert!(err.is_none(), "{err:?}");
        assert!(frames.len() >= 3, "{frames:?}");
        assert!(frames.iter().all(|(_, n)| *n == 1), "every frame after the receipt was fetched: {frames:?}");
        let held: String = frames.iter().map(|(f, _)| f.as_str()).collect();
        assert!(held.ends_with("data: [DONE]\n\n"), "{held}");
        assert!(verification.receipt().is_some(), "verified before the first frame");

        // The same stream through the default mode: the same bytes, in the same order.
        let default = ServiceBuilder::new()
            .layer(VerifyBeforeReleaseLayer::new(
                receipts(&env, Arc::default()),
                env.keys.clone(),
                ReceiptPolicy::new(),
            ))
            .layer(env.layer())
            .service(layer_client());
        let res = default.oneshot(post(&env.url("/v1/chat/completions"), &chat_stream())).await.unwrap();
        let released = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        let text = crate::support::sse_text(held.as_bytes(), "content");
        assert_eq!(text, crate::support::sse_text(released.as_bytes(), "content"));
        assert_eq!(text, "You said: a stream whose end waits for its receipt");
    }
}

/// Holding is bounded: a stream larger than the bound ends with `TooLarge` as its first frame,
/// before any receipt is fetched, and no content is released.
#[tokio::test]
async fn holding_the_whole_stream_is_bounded() {
    let env = Env::start(Suite::X25519).await;
    let fetched = Arc::new(AtomicUsize::new(0));
    let svc = holding_svc(&env, fetched.clone(), 200, None);
    let res = svc.oneshot(post(&env.url("/v1/chat/completions"), &chat_stream())).await.unwrap();
    let (frames, err) = frames(Box::pin(res.into_body()), &fetched).await;
    assert!(frames.is_empty(), "{frames:?}");
    let err = err.expect("the bound is exceeded");
    let ours = tower_aci::Error::find(err.as_ref()).expect("ours");
    assert_eq!(ours.kind(), ErrorKind::TooLarge, "{ours}");
    assert!(ours.to_string().contains("200"), "the message names the bound: {ours}");
    assert_eq!(fetched.load(Ordering::SeqCst), 0, "no receipt fetched for a stream that was not held whole");
}

/// Holding the whole stream, a stream that fails below (a tampered ciphertext) releases none of
/// the events that authenticated before it: its own error is the first frame.
#[tokio::test]
async fn holding_the_whole_stream_a_decryption_failure_is_the_first_frame() {
    let env = Env::start(Suite::X25519).await;
    env.gw.set_fault(Some(aci_test_gateway::Fault::TamperEvent { index: 3 }));
    let fetched = Arc::new(AtomicUsize::new(0));
    let svc = holding_svc(&env, fetched.clone(), 1 << 20, None);
    let res = svc.oneshot(post(&env.url("/v1/chat/completions"), &chat_stream())).await.unwrap();
    let (frames, err) = frames(Box::pin(res.into_body()), &fetched).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(
        tower_aci::Error::find(err.expect("fails").as_ref()).map(tower_aci::Error::kind),
        Some(ErrorKind::Decrypt)
    );
    assert_eq!(fetched.load(Ordering::SeqCst), 0);
}
