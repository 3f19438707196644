//! The stand-ins behave as the providers document: Strava activities (pagination, filters, summary
//! and detailed forms, 401 on a stale token, 404 after a delete, per-application rate limits in
//! clock-aligned windows), Polar AccessLink (403 before registration, data windows, 400/404/204,
//! rate limits in windows that start at the first request), and the FHIR validator.

mod support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{Days, Utc};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::stand_in::{POLAR_CLIENT_ID, POLAR_CLIENT_SECRET, STRAVA_CLIENT_ID, STRAVA_CLIENT_SECRET};
use support::{
    polar_daily_activity_json, polar_exercise_json, polar_sleep_json, strava_activity_json, Backend, FhirPartner,
    StandIn, TestApp,
};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The code the authorize page redirects back with.
async fn authorize(stand_in: &StandIn, path: &str, client_id: &str, scope: &str) -> String {
    let mut url = url::Url::parse(&stand_in.url(path)).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("scope", scope)
        .append_pair("state", "s1")
        .append_pair("approval_prompt", "auto")
        .append_pair("redirect_uri", REDIRECT);
    let answer = client().get(url).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FOUND);
    let back = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned()
}

/// A Strava athlete through the OAuth flow: `(athlete id, access token, refresh token)`.
async fn strava_athlete(stand_in: &StandIn) -> (u64, String, String) {
    let code = authorize(stand_in, "/strava/oauth/authorize", STRAVA_CLIENT_ID, "read,activity:read_all").await;
    let token: Value = client()
        .post(stand_in.url("/strava/oauth/token"))
        .form(&[
            ("client_id", STRAVA_CLIENT_ID),
            ("client_secret", STRAVA_CLIENT_SECRET),
            ("code", &code),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let athlete = token["athlete"]["id"].as_u64().unwrap();
    assert_eq!(stand_in.last_user_id(), Some(athlete));
    (athlete, token["access_token"].as_str().unwrap().into(), token["refresh_token"].as_str().unwrap().into())
}

/// A Polar user through the OAuth flow, not registered yet: `(x_user_id, access token)`.
async fn polar_user(stand_in: &StandIn) -> (u64, String) {
    let code = authorize(stand_in, "/polar/oauth2/authorization", POLAR_CLIENT_ID, "accesslink.read_all").await;
    let token: Value = client()
        .post(stand_in.url("/polar/v2/oauth2/token"))
        .basic_auth(POLAR_CLIENT_ID, Some(POLAR_CLIENT_SECRET))
        .form(&[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (token["x_user_id"].as_u64().unwrap(), token["access_token"].as_str().unwrap().into())
}

async fn get(stand_in: &StandIn, path: &str, token: &str) -> (StatusCode, HeaderMap, Value) {
    let answer = client().get(stand_in.url(path)).bearer_auth(token).send().await.unwrap();
    let (status, headers) = (answer.status(), answer.headers().clone());
    let text = answer.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap()
}

fn ids(list: &Value) -> Vec<u64> {
    list.as_array().unwrap().iter().map(|a| a["id"].as_u64().unwrap()).collect()
}

/// Sleeps until just after the start of the next Strava window of `window`, so that a burst of
/// requests falls in one window.
async fn next_strava_window(window: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    let w = window.as_millis();
    let wait = w - now % w + 20;
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
}

const T0: i64 = 1_773_471_731; // 2026-03-14T07:02:11Z

#[tokio::test]
async fn strava_lists_pages_of_summaries_and_answers_details() {
    let stand_in = StandIn::start().await;
    let (athlete, token, _) = strava_athlete(&stand_in).await;
    let (other, _) = stand_in.mint_user("strava");
    for i in 0..5u64 {
        stand_in.add_strava_activity(athlete, strava_activity_json(100 + i, T0 + i as i64 * 3600, "Run"));
    }
    stand_in.add_strava_activity(other, strava_activity_json(900, T0, "Ride"));

    // Newest first, 1-based pages, a short last page, then an empty one.
    let path = |q: &str| format!("/strava/api/v3/athlete/activities?{q}");
    let (status, headers, page1) = get(&stand_in, &path("per_page=2&page=1"), &token).await;
    assert_eq!(status, StatusCode::OK, "{page1}");
    assert_eq!(ids(&page1), [104, 103]);
    assert_eq!(header(&headers, "x-ratelimit-usage"), "1,1");
    assert_eq!(ids(&get(&stand_in, &path("per_page=2&page=2"), &token).await.2), [102, 101]);
    assert_eq!(ids(&get(&stand_in, &path("per_page=2&page=3"), &token).await.2), [100]);
    assert_eq!(ids(&get(&stand_in, &path("per_page=2&page=4"), &token).await.2), Vec::<u64>::new());
    assert_eq!(ids(&get(&stand_in, &path(""), &token).await.2), [104, 103, 102, 101, 100], "per_page 30 by default");

    // Summaries: resource_state 2, no calories, no device_name.
    let summary = &page1[0];
    assert_eq!(summary["resource_state"], 2);
    assert!(summary.get("calories").is_none() && summary.get("device_name").is_none(), "{summary}");
    assert_eq!(summary["athlete"], json!({"id": athlete, "resource_state": 1}));
    assert_eq!(summary["start_date"], "2026-03-14T11:02:11Z");
    assert_eq!(summary["start_date_local"], "2026-03-14T12:02:11Z");

    // (after, before) are exclusive; `after` alone answers oldest first.
    let (a, b) = (T0 + 3600, T0 + 4 * 3600);
    assert_eq!(ids(&get(&stand_in, &path(&format!("after={a}&before={b}")), &token).await.2), [103, 102]);
    assert_eq!(ids(&get(&stand_in, &path(&format!("after={a}")), &token).await.2), [102, 103, 104]);
    let (status, _, body) = get(&stand_in, &path("after=yesterday"), &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The detail carries calories and device_name.
    let (status, _, detail) = get(&stand_in, "/strava/api/v3/activities/102", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["resource_state"], 3);
    assert_eq!(detail["calories"], 742.0);
    assert_eq!(detail["device_name"], "Polar Pacer Pro");

    // Updates show; another athlete's activity, an unknown and a deleted one are 404.
    stand_in.update_strava_activity(102, json!({"name": "Evening Run", "sport_type": "TrailRun", "calories": null}));
    let detail = get(&stand_in, "/strava/api/v3/activities/102", &token).await.2;
    assert_eq!((detail["name"].as_str(), detail["sport_type"].as_str()), (Some("Evening Run"), Some("TrailRun")));
    assert!(detail.get("calories").is_none());
    let not_found =
        json!({"message": "Record Not Found", "errors": [{"resource": "Activity", "field": "id", "code": "invalid"}]});
    for id in ["900", "555", "x"] {
        let (status, _, body) = get(&stand_in, &format!("/strava/api/v3/activities/{id}"), &token).await;
        assert_eq!((status, &body), (StatusCode::NOT_FOUND, &not_found));
    }
    assert!(stand_in.delete_strava_activity(103));
    let (status, _, body) = get(&stand_in, "/strava/api/v3/activities/103", &token).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found));
    assert_eq!(ids(&get(&stand_in, &path(""), &token).await.2), [104, 102, 101, 100]);

    let log = stand_in.strava_api_log();
    assert_eq!(log.requests(), stand_in.strava_api_requests());
    assert_eq!(log.to("/activities/{id}"), 6);
    assert_eq!(log.to("/strava/api/v3/activities/103"), 1);
    assert_eq!(stand_in.strava_api_requests_by_route()["/athlete/activities"], 9);
    assert_eq!(stand_in.strava_429s(), 0);
}

#[tokio::test]
async fn strava_refuses_a_stale_token_with_its_error_body() {
    let stand_in = StandIn::start().await;
    let (athlete, old, refresh) = strava_athlete(&stand_in).await;
    let answer: Value = client()
        .post(stand_in.url("/strava/oauth/token"))
        .form(&[
            ("client_id", STRAVA_CLIENT_ID),
            ("client_secret", STRAVA_CLIENT_SECRET),
            ("refresh_token", refresh.as_str()),
            ("grant_type", "refresh_token"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = answer["access_token"].as_str().unwrap();
    assert_eq!(stand_in.latest_access_token(athlete).as_deref(), Some(new));
    let error = json!({"message": "Authorization Error", "errors": [{"resource": "Athlete", "field": "access_token", "code": "invalid"}]});
    for token in [old.as_str(), "", "polar-access-nope"] {
        let (status, headers, body) = get(&stand_in, "/strava/api/v3/athlete/activities", token).await;
        assert_eq!((status, &body), (StatusCode::UNAUTHORIZED, &error));
        assert!(headers.contains_key("x-ratelimit-usage"), "a 401 carries the rate-limit headers too");
    }
    assert_eq!(get(&stand_in, "/strava/api/v3/athlete/activities", new).await.0, StatusCode::OK);
    assert_eq!(stand_in.strava_api_log().count_status(401), 3);
}

#[tokio::test]
async fn strava_answers_429_over_a_limit_until_the_window_ends() {
    let stand_in = StandIn::start().await;
    let (_, token) = stand_in.mint_user("strava");
    let list = "/strava/api/v3/athlete/activities";
    let window = Duration::from_millis(1500);
    stand_in.set_strava_window(window);
    stand_in.set_strava_limits(3, 1000, 100, 1000);
    next_strava_window(window).await;
    let first_window = stand_in.strava_window_now();
    for n in 1..=3 {
        let (status, headers, _) = get(&stand_in, list, &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&headers, "x-ratelimit-limit"), "3,1000");
        assert_eq!(header(&headers, "x-ratelimit-usage"), format!("{n},{n}"));
        assert_eq!(header(&headers, "x-readratelimit-limit"), "100,1000");
        assert_eq!(header(&headers, "x-readratelimit-usage"), format!("{n},{n}"));
    }
    let (status, headers, body) = get(&stand_in, list, &token).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        json!({"message": "Rate Limit Exceeded", "errors": [{"resource": "Application", "field": "rate limit", "code": "exceeded"}]})
    );
    assert_eq!(header(&headers, "x-ratelimit-usage"), "4,4", "refused requests count");
    assert!(!stand_in.strava_repeated_429_in_window());
    assert_eq!(get(&stand_in, list, &token).await.0, StatusCode::TOO_MANY_REQUESTS);
    assert!(stand_in.strava_repeated_429_in_window(), "a second 429 in the same window");

    // The next window starts afresh; the daily usage goes on.
    next_strava_window(window).await;
    let (status, headers, _) = get(&stand_in, list, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-ratelimit-usage"), "1,6");
    let log = stand_in.strava_api_log();
    assert_eq!((log.requests(), stand_in.strava_429s()), (6, 2));
    assert!(log.0[..5].iter().all(|c| c.window == first_window));
    assert!(log.0[5].window > first_window);

    // The read limits and the daily limit refuse as well.
    stand_in.set_strava_window(Duration::from_secs(1_000_000));
    stand_in.set_strava_limits(100, 1000, 1, 1000);
    assert_eq!(get(&stand_in, list, &token).await.0, StatusCode::OK);
    let (status, headers, _) = get(&stand_in, list, &token).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&headers, "x-readratelimit-usage"), "2,8");
    stand_in.set_strava_limits(100, 9, 100, 1000);
    assert_eq!(get(&stand_in, list, &token).await.0, StatusCode::OK);
    assert_eq!(get(&stand_in, list, &token).await.0, StatusCode::TOO_MANY_REQUESTS, "the daily limit");

    // Benchmarks can do without the headers.
    stand_in.set_strava_limits(100_000, 100_000, 100_000, 100_000);
    stand_in.set_strava_rate_headers(false);
    let (status, headers, _) = get(&stand_in, list, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.keys().all(|k| !k.as_str().contains("ratelimit")), "{headers:?}");
}

#[tokio::test]
async fn polar_answers_registered_users_their_recent_data() {
    let stand_in = StandIn::start().await;
    let (user, token) = polar_user(&stand_in).await;
    let today = Utc::now().date_naive();
    let now = Utc::now();

    // 403 until the user is registered; 401 for a token that is not the user's.
    assert_eq!(get(&stand_in, "/polar/v3/exercises", &token).await.0, StatusCode::FORBIDDEN);
    let registered = client()
        .post(stand_in.url("/polar/v3/users"))
        .bearer_auth(&token)
        .json(&json!({"member-id": "member-7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::OK);
    for stale in ["", "polar-access-unknown", "strava-access-x"] {
        assert_eq!(get(&stand_in, "/polar/v3/exercises", stale).await.0, StatusCode::UNAUTHORIZED);
    }

    // Exercises of the last 30 days; optional parts only when asked for.
    let mut recent = polar_exercise_json("2AC312F", now - chrono::Duration::days(2), 60, "PT50M12S");
    recent["samples"] = json!([{"recording-rate": 5, "sample-type": "0", "data": "100,102"}]);
    stand_in.add_polar_exercise(user, recent);
    stand_in.add_polar_exercise(user, polar_exercise_json("OLD1", now - chrono::Duration::days(40), 60, "PT1H"));
    let (status, _, list) = get(&stand_in, "/polar/v3/exercises", &token).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "2AC312F");
    assert!(list[0].get("samples").is_none());
    assert!(list[0]["polar_user"].as_str().unwrap().ends_with(&format!("/polar/v3/users/{user}")));
    let (status, _, one) = get(&stand_in, "/polar/v3/exercises/2AC312F?samples=true", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["samples"][0]["data"], "100,102");
    assert_eq!(one["start_time_utc_offset"], 60);
    assert_eq!(get(&stand_in, "/polar/v3/exercises/OLD1", &token).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&stand_in, "/polar/v3/exercises/NOPE", &token).await.0, StatusCode::NOT_FOUND);

    // Sleep: {"nights": [...]} of the last 28 days; 404 for a night without data.
    let last_night = today;
    stand_in.add_polar_sleep(user, polar_sleep_json(last_night, "+01:00"));
    stand_in.add_polar_sleep(user, polar_sleep_json(today - Days::new(40), "+01:00"));
    let (status, _, nights) = get(&stand_in, "/polar/v3/users/sleep", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(nights["nights"].as_array().unwrap().len(), 1, "{nights}");
    assert_eq!(nights["nights"][0]["date"], last_night.to_string());
    let (status, _, night) = get(&stand_in, &format!("/polar/v3/users/sleep/{last_night}"), &token).await;
    assert_eq!((status, night["light_sleep"].as_u64()), (StatusCode::OK, Some(14400)));
    let yesterday = today - Days::new(1);
    assert_eq!(get(&stand_in, &format!("/polar/v3/users/sleep/{yesterday}"), &token).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&stand_in, "/polar/v3/users/sleep/14-03-2026", &token).await.0, StatusCode::BAD_REQUEST);
    let available = get(&stand_in, "/polar/v3/users/sleep/available", &token).await.2;
    assert_eq!(available["available"][0]["date"], last_night.to_string());

    // Daily activity: ranges of at most 28 days; 204 for a day without data.
    for back in [1, 5, 30] {
        stand_in
            .add_polar_daily_activity(user, polar_daily_activity_json(today - Days::new(back), 8823, 2500, "PT3H11M"));
    }
    let range = |from: u64, to: u64| {
        format!("/polar/v3/users/activities?from={}&to={}", today - Days::new(from), today - Days::new(to))
    };
    let (status, _, days) = get(&stand_in, &range(28, 0), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(days.as_array().unwrap().len(), 2);
    assert_eq!(days[0]["steps"], 8823);
    assert_eq!(days[0]["start_time"], format!("{}T00:00:00", today - Days::new(5)));
    assert_eq!(get(&stand_in, "/polar/v3/users/activities", &token).await.2.as_array().unwrap().len(), 2);
    assert_eq!(get(&stand_in, &range(30, 2), &token).await.2.as_array().unwrap().len(), 2, "28 days");
    assert_eq!(get(&stand_in, &range(30, 0), &token).await.0, StatusCode::BAD_REQUEST, "30 days");
    assert_eq!(get(&stand_in, &range(400, 380), &token).await.0, StatusCode::BAD_REQUEST, "older than 365 days");
    let day = today - Days::new(5);
    let (status, _, summary) = get(&stand_in, &format!("/polar/v3/users/activities/{day}"), &token).await;
    assert_eq!((status, summary["calories"].as_u64()), (StatusCode::OK, Some(2500)));
    let (status, _, body) = get(&stand_in, &format!("/polar/v3/users/activities/{today}"), &token).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, json!("")));

    // Consents withdrawn, or the user deleted: 403.
    stand_in.set_polar_registered(user, false);
    assert_eq!(get(&stand_in, "/polar/v3/users/sleep", &token).await.0, StatusCode::FORBIDDEN);
    stand_in.set_polar_registered(user, true);
    let deleted = client().delete(stand_in.url(&format!("/polar/v3/users/{user}"))).bearer_auth(&token).send().await;
    assert_eq!(deleted.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(get(&stand_in, "/polar/v3/users/sleep", &token).await.0, StatusCode::FORBIDDEN);
    assert_eq!(stand_in.polar_api_log().count_status(403), 3);
}

#[tokio::test]
async fn polar_windows_start_at_the_first_request_and_count_down() {
    let stand_in = StandIn::start().await;
    let (_, token) = stand_in.mint_user("polar");
    stand_in.set_polar_limits(2, 100);
    stand_in.set_polar_windows(Duration::from_secs(2), Duration::from_secs(60));
    let path = "/polar/v3/exercises";

    let (status, headers, _) = get(&stand_in, path, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "ratelimit-limit"), "2,100");
    assert_eq!(header(&headers, "ratelimit-usage"), "1,1");
    assert_eq!(header(&headers, "ratelimit-reset"), "2,60");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, headers, _) = get(&stand_in, path, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "ratelimit-usage"), "2,2");
    assert_eq!(header(&headers, "ratelimit-reset"), "1,59", "counting down");
    let (status, headers, _) = get(&stand_in, path, &token).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&headers, "ratelimit-usage"), "3,3");
    assert!(!stand_in.polar_repeated_429_in_window());

    // The first request after the window ended opens a new one.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, headers, _) = get(&stand_in, path, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "ratelimit-usage"), "1,4");
    assert_eq!(header(&headers, "ratelimit-reset"), "2,58");
    let windows: Vec<u64> = stand_in.polar_api_log().0.iter().map(|c| c.window).collect();
    assert_eq!(windows, [0, 0, 0, 1]);
    assert_eq!((stand_in.polar_api_requests(), stand_in.polar_429s()), (4, 1));

    stand_in.set_polar_rate_headers(false);
    let (_, headers, _) = get(&stand_in, path, &token).await;
    assert!(headers.get("ratelimit-usage").is_none());
    let by_route: HashMap<String, usize> = stand_in.polar_api_log().by_route().into_iter().collect();
    assert_eq!(by_route["/exercises"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_connected_through_wearlink_can_be_given_data() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for provider in ["strava", "polar"] {
        app.configure(provider).await;
        let patient = app.create_patient().await;
        let (status, _, body) = app.connect_and_approve(provider, json!({"patientId": patient})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let user = app.stand_in.last_user_id().unwrap();
        let token = app.stand_in.latest_access_token(user).unwrap();
        let path = if provider == "strava" { "/strava/api/v3/athlete/activities" } else { "/polar/v3/exercises" };
        if provider == "strava" {
            app.stand_in.add_strava_activity(user, strava_activity_json(1, T0, "Ride"));
        } else {
            app.stand_in.add_polar_exercise(user, polar_exercise_json("A1", Utc::now(), 120, "PT210.026S"));
        }
        let (status, _, list) = get(&app.stand_in, path, &token).await;
        assert_eq!(status, StatusCode::OK, "{provider}: registered at connect");
        assert_eq!(list.as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn the_fhir_validator_accepts_valid_resources_and_rejects_invalid_ones() {
    let Some(fhir) = FhirPartner::start().await else { return };
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "activity"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "55411-3", "display": "Exercise duration"}]},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2026-03-14T07:02:11Z", "end": "2026-03-14T07:52:23Z"},
        "valueQuantity": {"value": 48.2, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"},
    });
    fhir.validate(&observation).await.unwrap();
    let mut with_id = observation.clone();
    with_id["id"] = json!("strava-17234567890-55411-3");
    with_id["meta"] = json!({"versionId": "7", "source": "Endpoint/e1"});
    fhir.validate(&with_id).await.unwrap();

    let mut invalid = observation.clone();
    invalid.as_object_mut().unwrap().remove("status");
    invalid.as_object_mut().unwrap().remove("code");
    let error = fhir.validate(&invalid).await.unwrap_err();
    assert!(error.contains("status") && error.contains("code"), "{error}");
    let mut bad_status = observation.clone();
    bad_status["status"] = json!("done");
    assert!(fhir.validate(&bad_status).await.is_err());
    assert!(fhir.validate_all(&[observation, bad_status]).await.unwrap_err().starts_with("[1] Observation"));
}
