//! Property tests of what parses and verifies provider webhook bodies: arbitrary bytes never
//! panic, and a Polar signature holds for exactly the body it was made for.

use hmac::Mac;
use proptest::prelude::*;
use wearlink::providers::withings::Notification as WithingsNotification;
use wearlink::providers::{verify_polar_signature, PolarEvent, StravaEvent};

fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_parsers(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = StravaEvent::parse(&body);
        let _ = PolarEvent::parse(&body);
        let _ = WithingsNotification::parse(&body);
        let _ = verify_polar_signature(b"key", &body, &String::from_utf8_lossy(&body));
    }

    #[test]
    fn json_of_the_wrong_shape_is_refused(value in any::<i64>(), text in "\\PC{0,40}") {
        let shapes = [
            serde_json::json!({"object_type": value, "object_id": text}),
            serde_json::json!({"event": value, "user_id": text}),
            serde_json::json!([value, text]),
        ];
        for body in shapes {
            let body = body.to_string();
            prop_assert!(StravaEvent::parse(body.as_bytes()).is_err());
            prop_assert!(PolarEvent::parse(body.as_bytes()).is_err());
        }
    }

    #[test]
    fn withings_forms_round_trip_and_odd_fields_are_refused(
        user in 1u64..10_000_000_000, appli in 0u32..100, start in 0i64..4_000_000_000, text in "\\PC{1,20}",
    ) {
        let body = format!("userid={user}&appli={appli}&startdate={start}&enddate={start}");
        let n = WithingsNotification::parse(body.as_bytes()).unwrap();
        prop_assert_eq!(&n.userid, &user.to_string());
        prop_assert_eq!(n.start_ms(), Some(start * 1000));
        let odd: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("userid", &format!("{user}{text}"))
            .append_pair("appli", &appli.to_string())
            .finish();
        prop_assert_eq!(WithingsNotification::parse(odd.as_bytes()).is_ok(), text.bytes().all(|b| b.is_ascii_digit()) && format!("{user}{text}").len() <= 24);
    }

    #[test]
    fn strava_events_round_trip(owner in any::<u32>(), object in any::<u64>(), time in any::<i32>()) {
        let body = serde_json::json!({"aspect_type": "create", "event_time": time, "object_id": object,
            "object_type": "activity", "owner_id": owner, "subscription_id": 1, "updates": {}}).to_string();
        let event = StravaEvent::parse(body.as_bytes()).unwrap();
        prop_assert_eq!(event.owner_id, u64::from(owner));
        prop_assert_eq!(event.event_type(), "activity.create");
        prop_assert!(!event.deauthorizes());
    }

    #[test]
    fn a_signature_holds_for_its_body_only(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        body in proptest::collection::vec(any::<u8>(), 1..256),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let signature = sign(&key, &body);
        prop_assert!(verify_polar_signature(&key, &body, &signature));
        prop_assert!(verify_polar_signature(&key, &body, &signature.to_uppercase()), "hex case does not matter");
        let mut changed = body.clone();
        let i = flip.index(changed.len());
        changed[i] ^= 1 << bit;
        prop_assert!(!verify_polar_signature(&key, &changed, &signature));
        let mut other_key = key.clone();
        other_key[0] ^= 1;
        prop_assert!(!verify_polar_signature(&other_key, &body, &signature));
    }
}
