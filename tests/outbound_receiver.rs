//! The test receiver of outbound events checks itself: messages signed with the `standardwebhooks`
//! crate verify, forged or stale ones do not, and it answers as scripted. Needs nothing of the
//! service, so it says whether `tests/outbound.rs` can trust what the receiver reports.

mod support;

use std::time::Duration;

use standardwebhooks::Webhook;
use support::receiver::{assert_secret_format, new_secret, Behaviour, Receiver};

fn now_secs() -> i64 {
    wearlink::time::now_ms() / 1000
}

/// Posts `body` as a Standard Webhook signed with `secrets` (every one an entry of the header).
async fn post_signed(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    timestamp: i64,
    body: &str,
    secrets: &[&str],
) -> Result<reqwest::StatusCode, reqwest::Error> {
    let signature: Vec<String> =
        secrets.iter().map(|s| Webhook::new(s).unwrap().sign(id, timestamp, body.as_bytes()).unwrap()).collect();
    let response = http
        .post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature.join(" "))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    Ok(response.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_verifies_with_the_standard_library_and_answers_as_told() {
    let receiver = Receiver::start().await;
    let (old, new) = (new_secret(), new_secret());
    assert_secret_format(&old);
    receiver.add_secret("old", &old);
    let http = reqwest::Client::new();
    let body = r#"{"type":"webhook-endpoint.test","timestamp":"2026-11-25T10:00:00Z","data":{"n":1}}"#;

    // Signed with the endpoint's secret: verified, recorded, 200.
    let status = post_signed(&http, &receiver.url(), "msg_1", now_secs(), body, &[&old]).await.unwrap();
    assert_eq!(status, 200);
    let got = receiver.wait_for(1, Duration::from_secs(2)).await;
    let d = &got[0];
    assert_eq!(d.webhook_id.as_deref(), Some("msg_1"));
    assert_eq!(d.event_type, "webhook-endpoint.test");
    assert_eq!(d.data["n"], 1);
    assert_eq!(d.content_type.as_deref(), Some("application/json"));
    assert_eq!(d.verified_under, vec!["old".to_string()]);
    assert_eq!(d.signed_by(), vec![Some("old".to_string())]);
    assert_eq!(d.status, Some(200));
    assert_eq!(d.path, "/hooks/wearlink");

    // Two secrets in one header (a rotation's overlap): each entry is attributed.
    receiver.add_secret("new", &new);
    post_signed(&http, &receiver.url(), "msg_2", now_secs(), body, &[&new, &old]).await.unwrap();
    let d = &receiver.wait_for(2, Duration::from_secs(2)).await[1];
    assert_eq!(d.signed_by(), vec![Some("new".to_string()), Some("old".to_string())]);
    assert_eq!(d.verified_under, vec!["old".to_string(), "new".to_string()]);

    // Forged (another secret), tampered, or stale: refused with 401 and recorded as unverified.
    let stranger = new_secret();
    let status = post_signed(&http, &receiver.url(), "msg_3", now_secs(), body, &[&stranger]).await.unwrap();
    assert_eq!(status, 401);
    let ts = now_secs();
    let signature = Webhook::new(&old).unwrap().sign("msg_4", ts, body.as_bytes()).unwrap();
    let status = http
        .post(receiver.url())
        .header("webhook-id", "msg_4")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body.replace("\"n\":1", "\"n\":2"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "a changed body does not verify");
    let status = post_signed(&http, &receiver.url(), "msg_5", now_secs() - 3600, body, &[&old]).await.unwrap();
    assert_eq!(status, 401, "an hour-old timestamp does not verify");
    let all = receiver.wait_for(5, Duration::from_secs(2)).await;
    for d in &all[2..] {
        assert!(!d.verified(), "#{} verified: {:?}", d.seq, d.verified_under);
        assert_eq!(d.status, Some(401));
    }
    assert_eq!(all[2].signed_by(), vec![None]);
    assert!(all[4].verify_errors.iter().any(|(_, e)| e == "signature timestamp too old"), "{:?}", all[4].verify_errors);

    // A scripted sequence, then every other request failing.
    receiver.script(&[500, 503]);
    receiver.set_behaviour(Behaviour::FailEveryOther);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let id = format!("msg_s{i}");
        statuses.push(post_signed(&http, &receiver.url(), &id, now_secs(), body, &[&new]).await.unwrap().as_u16());
    }
    assert_eq!(statuses, vec![500, 503, 500, 200, 500, 200]);
    assert_eq!(receiver.ids_accepted().len(), 4, "msg_1, msg_2, msg_s3, msg_s5");

    // Never answering: the client's timeout fires; recorded with no status.
    receiver.set_behaviour(Behaviour::Hang(Duration::from_secs(5)));
    let short = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let started = std::time::Instant::now();
    let err = post_signed(&short, &receiver.url(), "msg_h", now_secs(), body, &[&new]).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let d = receiver.with_id("msg_h");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].status, None);
    assert!(d[0].verified());

    receiver.assert_stays_at(12, Duration::from_millis(50)).await;
    assert_eq!(receiver.of_type("webhook-endpoint.test").len(), 12);
}

#[tokio::test]
#[should_panic(expected = "did not verify")]
async fn an_unverified_delivery_fails_the_check() {
    let receiver = Receiver::start().await;
    receiver.add_secret("endpoint", &new_secret());
    let other = new_secret();
    let http = reqwest::Client::new();
    post_signed(&http, &receiver.url(), "msg_x", now_secs(), r#"{"type":"x","data":{}}"#, &[&other]).await.unwrap();
    receiver.wait_for(1, Duration::from_secs(2)).await;
    receiver.assert_all_verified();
}

#[tokio::test]
#[should_panic(expected = "no 2 deliveries")]
async fn waiting_is_bounded() {
    let receiver = Receiver::start().await;
    receiver.wait_for(2, Duration::from_millis(100)).await;
}
