//! Stories of data sync: connect a provider, and its data arrives as FHIR — once, correctly,
//! within the provider's rate limits, whatever instances come and go.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::stand_in::{self, polar_daily_activity_json, polar_exercise_json, polar_sleep_json, strava_activity_json};
use support::{fhir_partner::FhirPartner, Backend, Options, TestApp};
use wearlink::time::now_ms;

on_both_backends!(
    connecting_strava_backfills_its_activities_as_valid_fhir,
    strava_updates_make_new_versions_deletes_mark_errors_and_redeliveries_change_nothing,
    polar_exercise_sleep_and_daily_activity_land_at_the_right_instants,
    a_spent_rate_limit_parks_the_backfill_and_fresh_data_still_goes_first,
    an_instance_killed_mid_backfill_is_taken_over_from_its_cursor,
    an_expired_token_is_refreshed_once_and_the_backfill_goes_on,
    disconnecting_mid_backfill_stops_it_and_keeps_what_was_written,
    the_reconciliation_pass_finds_an_activity_whose_webhook_never_came,
    a_worker_whose_lease_ran_out_cannot_overwrite_the_one_that_took_over,
    an_event_whose_fetch_keeps_failing_is_dead_lettered_and_can_be_replayed,
);

const DAY: i64 = 86_400;

/// Connects a Strava patient (with the push subscription); answers (patient, endpoint, athlete).
async fn strava_patient(app: &TestApp) -> (String, String, u64) {
    app.configure("strava").await;
    let (status, body) =
        app.send("POST", "/v1/wearables/strava/webhook-subscription", Some(&app.admin.clone()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    connected(app, "strava").await
}

async fn connected(app: &TestApp, provider: &str) -> (String, String, u64) {
    let patient = app.create_patient().await;
    let (status, _, page) = app.connect_and_approve(provider, json!({"patientId": patient})).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let endpoint = page["endpointId"].as_str().unwrap().to_string();
    (patient, endpoint, app.stand_in.last_user_id().unwrap())
}

/// `count` activities of `athlete`, one a day from `first_days_ago` on; answers their ids.
fn seed_activities(app: &TestApp, athlete: u64, first_id: u64, count: u64, first_days_ago: i64) -> Vec<u64> {
    let now = now_ms() / 1000;
    (0..count)
        .map(|i| {
            let start = now - first_days_ago * DAY + (i as i64) * (first_days_ago * DAY / (count as i64 + 1)).max(60);
            app.stand_in.add_strava_activity(athlete, strava_activity_json(first_id + i, start, "Run"))
        })
        .collect()
}

async fn search(app: &TestApp, query: &str) -> Value {
    let (status, bundle) = app.get(&format!("/fhir/R4/{query}")).await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    assert_eq!(bundle["type"], "searchset");
    bundle
}

fn resources(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().map(|e| e.iter().map(|e| e["resource"].clone()).collect()).unwrap_or_default()
}

async fn sync_of(app: &TestApp, endpoint: &str) -> Value {
    let (_, list) = app.get("/v1/wearables/connections").await;
    list["connections"].as_array().unwrap().iter().find(|c| c["id"] == endpoint).unwrap()["sync"].clone()
}

fn strava_event(owner: u64, object_id: u64, aspect: &str, event_time: i64, updates: Value) -> Value {
    json!({
        "aspect_type": aspect, "event_time": event_time, "object_id": object_id, "object_type": "activity",
        "owner_id": owner, "subscription_id": stand_in::STRAVA_SUBSCRIPTION_ID, "updates": updates
    })
}

async fn deliver_strava(app: &TestApp, event: &Value) -> Value {
    let path = format!("/v1/wearables/strava/webhook/{}", app.project_id);
    let (status, body) = app.send("POST", &path, None, Some(event.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn observation<'a>(observations: &'a [Value], code: &str) -> &'a Value {
    observations
        .iter()
        .find(|o| o["code"]["coding"][0]["code"] == code)
        .unwrap_or_else(|| panic!("no Observation {code} in {observations:?}"))
}

async fn connecting_strava_backfills_its_activities_as_valid_fhir(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, endpoint, athlete) = strava_patient(&app).await;
    let recent = seed_activities(&app, athlete, 17_234_567_890, 3, 20);
    seed_activities(&app, athlete, 900, 1, 45); // outside the default 30 days
    let other = app.stand_in.add_strava_activity(athlete + 7, strava_activity_json(555, now_ms() / 1000 - DAY, "Ride"));
    assert!(other > 0);

    assert!(app.sync().await >= 1, "the backfill queued by the callback runs");

    let procedures = search(&app, &format!("Procedure?patient=Patient/{patient}")).await;
    assert_eq!(procedures["total"], 3, "the activities of the window, and only this athlete's: {procedures}");
    let sessions = resources(&procedures);
    let first = sessions.iter().find(|p| p["identifier"][0]["value"] == json!(recent[0].to_string())).unwrap();
    assert_eq!(first["identifier"][0]["system"], "https://www.strava.com/activities");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["subject"]["reference"], format!("Patient/{patient}"));
    assert_eq!(first["code"]["coding"][0]["code"], "Run");
    assert_eq!(first["meta"]["versionId"], "1");

    let bundle = search(&app, &format!("Observation?patient=Patient/{patient}&_count=100")).await;
    let observations = resources(&bundle);
    assert_eq!(bundle["total"], 15, "five measures per activity");
    let mine: Vec<Value> = observations
        .iter()
        .filter(|o| o["partOf"][0]["reference"] == format!("Procedure/{}", first["id"].as_str().unwrap()))
        .cloned()
        .collect();
    let moving = observation(&mine, "55411-3");
    assert_eq!(moving["valueQuantity"]["unit"], "min");
    assert_eq!(moving["valueQuantity"]["code"], "min");
    let energy = observation(&mine, "55424-6");
    assert_eq!(energy["valueQuantity"]["value"].as_f64(), Some(742.0), "calories from the detail, not kilojoules");
    assert_eq!(energy["valueQuantity"]["code"], "kcal");
    assert_eq!(observation(&mine, "55425-3")["valueQuantity"]["value"].as_f64(), Some(151.2));
    assert_eq!(observation(&mine, "55426-1")["valueQuantity"]["code"], "/min");

    // Search by code (with and without system), date, paging and order.
    let by_code = search(&app, &format!("Observation?patient=Patient/{patient}&code=http://loinc.org|55411-3")).await;
    assert_eq!(by_code["total"], 3);
    let bare = search(&app, &format!("Observation?patient=Patient/{patient}&code=55424-6,55426-1")).await;
    assert_eq!(bare["total"], 6);
    let cutoff = wearlink::time::to_rfc3339((now_ms() / 1000 - 12 * DAY) * 1000);
    let late = search(&app, &format!("Procedure?patient=Patient/{patient}&date=ge{}", &cutoff[..10])).await;
    let early = search(&app, &format!("Procedure?patient=Patient/{patient}&date=lt{}", &cutoff[..10])).await;
    assert_eq!(late["total"].as_i64().unwrap() + early["total"].as_i64().unwrap(), 3);
    assert!(early["total"].as_i64().unwrap() >= 1 && late["total"].as_i64().unwrap() >= 1, "{late} {early}");
    let page = search(&app, &format!("Procedure?patient=Patient/{patient}&_count=2&_sort=-date")).await;
    assert_eq!(resources(&page).len(), 2);
    assert_eq!(page["total"], 3);
    let next =
        page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap();
    let (_, rest) = app.get(next.strip_prefix(&app.base).unwrap()).await;
    assert_eq!(resources(&rest).len(), 1);
    let newest = resources(&page)[0]["performedPeriod"]["start"].as_str().unwrap().to_string();
    assert!(newest.as_str() > resources(&rest)[0]["performedPeriod"]["start"].as_str().unwrap());
    let (status, bad) = app.get(&format!("/fhir/R4/Observation?patient=Patient/{patient}&value-quantity=5")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");

    // Read, vread, and the connection's sync progress.
    let id = first["id"].as_str().unwrap();
    let (status, read) = app.get(&format!("/fhir/R4/Procedure/{id}")).await;
    assert_eq!((status, &read["id"]), (StatusCode::OK, &first["id"]));
    let (status, _) = app.get(&format!("/fhir/R4/Procedure/{id}/_history/1")).await;
    assert_eq!(status, StatusCode::OK);
    let sync = sync_of(&app, &endpoint).await;
    assert_eq!(sync["state"], "idle", "{sync}");
    assert_eq!(sync["backfill"]["done"], 3, "{sync}");
    assert!(sync["lastSyncedAt"].is_i64());

    // Another project sees none of it.
    let (_, other_admin) = app.other_project().await;
    let (status, _) = app.send("GET", &format!("/fhir/R4/Procedure/{id}"), Some(&other_admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A resync writes nothing new when nothing changed.
    let admin = app.admin.clone();
    let (status, body) =
        app.send("POST", &format!("/v1/wearables/connections/{endpoint}/sync"), Some(&admin), Some(json!({}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.sync().await;
    let (_, again) = app.get(&format!("/fhir/R4/Procedure/{id}")).await;
    assert_eq!(again["meta"]["versionId"], "1", "unchanged data keeps its version");

    // Every resource is valid R4 by a validator written elsewhere (Medplum's).
    if let Some(validator) = FhirPartner::start().await {
        let mut all = sessions.clone();
        all.extend(observations);
        validator.validate_all(&all).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
}

async fn strava_updates_make_new_versions_deletes_mark_errors_and_redeliveries_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, _, athlete) = strava_patient(&app).await;
    let ids = seed_activities(&app, athlete, 4242, 2, 5);
    app.sync().await;
    let procedure_of = |activity: u64| {
        let app = &app;
        let patient = patient.clone();
        async move {
            let bundle = search(app, &format!("Procedure?patient=Patient/{patient}")).await;
            resources(&bundle).into_iter().find(|p| p["identifier"][0]["value"] == json!(activity.to_string())).unwrap()
        }
    };
    assert_eq!(procedure_of(ids[0]).await["meta"]["versionId"], "1");

    // The athlete renames the activity and changes its type: Strava sends an update.
    app.stand_in.update_strava_activity(ids[0], json!({"name": "Evening Ride", "sport_type": "Ride", "type": "Ride"}));
    let update =
        strava_event(athlete, ids[0], "update", 1_764_064_000, json!({"title": "Evening Ride", "type": "Ride"}));
    deliver_strava(&app, &update).await;
    assert_eq!(app.sync().await, 1);
    let updated = procedure_of(ids[0]).await;
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["code"]["coding"][0]["code"], "Ride");
    let (status, first) = app.get(&format!("/fhir/R4/Procedure/{}/_history/1", updated["id"].as_str().unwrap())).await;
    assert_eq!((status, &first["code"]["coding"][0]["code"]), (StatusCode::OK, &json!("Run")), "history kept");
    let (_, events) = app.get(&format!("/v1/wearables/events?patientId={patient}")).await;
    let event = &events["events"][0];
    assert_eq!(event["state"], "synced", "{event}");
    assert!(
        event["syncedRefs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == &json!(format!("Procedure/{}", updated["id"].as_str().unwrap()))),
        "{event}"
    );

    // Redelivered, and an update with nothing changed: no new version.
    assert_eq!(deliver_strava(&app, &update).await["duplicate"], true);
    let same = strava_event(athlete, ids[0], "update", 1_764_064_100, json!({"private": "false"}));
    deliver_strava(&app, &same).await;
    app.sync().await;
    assert_eq!(procedure_of(ids[0]).await["meta"]["versionId"], "2", "unchanged content keeps its version");

    // Deleted at Strava: the session and its measures are entered-in-error, not deleted.
    app.stand_in.delete_strava_activity(ids[1]);
    deliver_strava(&app, &strava_event(athlete, ids[1], "delete", 1_764_064_200, json!({}))).await;
    app.sync().await;
    let deleted = procedure_of(ids[1]).await;
    assert_eq!(deleted["status"], "entered-in-error");
    let observations = resources(&search(&app, &format!("Observation?patient=Patient/{patient}&_count=100")).await);
    let of_deleted: Vec<&Value> = observations
        .iter()
        .filter(|o| o["partOf"][0]["reference"] == format!("Procedure/{}", deleted["id"].as_str().unwrap()))
        .collect();
    assert!(!of_deleted.is_empty());
    assert!(of_deleted.iter().all(|o| o["status"] == "entered-in-error"), "{of_deleted:?}");
    assert_eq!(search(&app, &format!("Procedure?patient=Patient/{patient}")).await["total"], 2, "nothing duplicated");
}

async fn polar_exercise_sleep_and_daily_activity_land_at_the_right_instants(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.configure("polar").await;
    let (patient, endpoint, user) = connected(&app, "polar").await;
    let start = chrono::Utc::now() - chrono::Duration::days(3);
    let start = start.date_naive().and_hms_opt(7, 2, 11).unwrap().and_utc();
    app.stand_in.add_polar_exercise(user, polar_exercise_json("2AC312F", start, 60, "PT50M12S"));
    let night = (chrono::Utc::now() - chrono::Duration::days(2)).date_naive();
    app.stand_in.add_polar_sleep(user, polar_sleep_json(night, "+01:00"));
    app.stand_in.add_polar_daily_activity(user, polar_daily_activity_json(night, 9_876, 2_345, "PT3H12M"));

    app.sync().await;

    let sessions = resources(&search(&app, &format!("Procedure?patient=Patient/{patient}")).await);
    assert_eq!(sessions.len(), 1);
    let performed = &sessions[0]["performedPeriod"];
    let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().with_timezone(&chrono::Utc);
    assert_eq!(at(&performed["start"]), start, "UTC = local start − offset (+60 min)");
    assert_eq!(at(&performed["end"]) - at(&performed["start"]), chrono::Duration::seconds(50 * 60 + 12));
    assert!(performed["start"].as_str().unwrap().ends_with("+01:00"), "the offset Polar gave is kept: {performed}");

    let sleep = search(&app, &format!("Observation?patient=Patient/{patient}&code=http://loinc.org|93832-4")).await;
    let total = &resources(&sleep)[0];
    assert_eq!(total["valueQuantity"]["value"].as_f64(), Some(420.0), "light + deep + rem + unrecognized, in minutes");
    assert_eq!(total["valueQuantity"]["code"], "min");
    let stages = search(&app, &format!("Observation?patient=Patient/{patient}&code=93831-6,93830-8,93829-0")).await;
    assert_eq!(stages["total"], 3);
    let steps = search(&app, &format!("Observation?patient=Patient/{patient}&code=41950-7")).await;
    assert_eq!(resources(&steps)[0]["valueQuantity"]["value"].as_f64(), Some(9876.0));

    // A second pass (a resync) writes no duplicate stages.
    let admin = app.admin.clone();
    app.send("POST", &format!("/v1/wearables/connections/{endpoint}/sync"), Some(&admin), Some(json!({}))).await;
    app.sync().await;
    let again = search(&app, &format!("Observation?patient=Patient/{patient}&code=93831-6,93830-8,93829-0")).await;
    assert_eq!(again["total"], 3);

    if let Some(validator) = FhirPartner::start().await {
        let mut all = sessions.clone();
        all.extend(resources(&search(&app, &format!("Observation?patient=Patient/{patient}&_count=100")).await));
        validator.validate_all(&all).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
}

/// Strava's "15-minute" window compressed to `WINDOW` (the stand-in's too).
const WINDOW: Duration = Duration::from_secs(3);

fn compressed_windows(config: &mut wearlink::Config) {
    config.provider_urls.get_mut("strava").unwrap().short_rate_window = Some(WINDOW);
}

async fn a_spent_rate_limit_parks_the_backfill_and_fresh_data_still_goes_first(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options { tweak: compressed_windows, ..Default::default() }).await;
    app.stand_in.set_strava_window(WINDOW);
    app.stand_in.set_strava_limits(100_000, 100_000, 20, 100_000);
    let (patient, endpoint, athlete) = strava_patient(&app).await;
    seed_activities(&app, athlete, 10_000, 60, 25);

    // The first pass uses the background share of the window (90 % of 20) and parks.
    app.sync().await;
    let written = search(&app, &format!("Procedure?patient=Patient/{patient}")).await["total"].as_i64().unwrap();
    assert!(written > 0 && written < 60, "{written}");
    let parked_in = app.stand_in.strava_api_log().0.last().unwrap().window;
    let sync = sync_of(&app, &endpoint).await;
    if app.stand_in.strava_window_now() == parked_in {
        // (On a busy machine the short window may already have ended; then it is backfilling again.)
        assert_eq!(sync["state"], "paused", "{sync}");
        assert!(sync["rateLimitedUntil"].as_i64().unwrap() > now_ms());
    }

    // A webhook's activity goes through on the headroom kept for it.
    let fresh = app.stand_in.add_strava_activity(athlete, strava_activity_json(99_999, now_ms() / 1000 - 600, "Swim"));
    deliver_strava(&app, &strava_event(athlete, fresh, "create", 1_764_064_300, json!({}))).await;
    app.sync().await;
    let (_, events) = app.get(&format!("/v1/wearables/events?patientId={patient}")).await;
    assert_eq!(events["events"][0]["state"], "synced", "{events}");

    // Windows reset; the backfill resumes until everything is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        app.sync().await;
        let total = search(&app, &format!("Procedure?patient=Patient/{patient}")).await["total"].as_i64().unwrap();
        if total == 61 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "backfill stuck at {total}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!app.stand_in.strava_repeated_429_in_window(), "never a 429 twice in a window");
    assert_eq!(app.stand_in.strava_429s(), 0, "the budget kept us under the limit");
    assert_eq!(sync_of(&app, &endpoint).await["backfill"]["done"], 61, "the webhook's activity is in the range too");
}

async fn an_instance_killed_mid_backfill_is_taken_over_from_its_cursor(backend: Backend) {
    fn short_lease(config: &mut wearlink::Config) {
        config.sync.lease = Duration::from_secs(1);
    }
    let app = TestApp::spawn_with(backend, Options { tweak: short_lease, ..Default::default() }).await;
    let (patient, endpoint, athlete) = strava_patient(&app).await;
    seed_activities(&app, athlete, 50_000, 250, 28);

    // Instance A works on the backfill and dies after its first page.
    let services = std::sync::Arc::clone(&app.services);
    let a = tokio::spawn(async move { wearlink::sync::run_due(&services, now_ms()).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // A page counts as done before its cursor is stored: wait for the next page's list call too,
    // which A makes only once the cursor is stored (else B may rightly start over).
    while sync_of(&app, &endpoint).await["backfill"]["done"].as_i64().unwrap_or(0) < 100
        || app.stand_in.strava_api_log().to("/athlete/activities") < 2
    {
        assert!(std::time::Instant::now() < deadline, "instance A made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.abort();
    let _ = a.await;

    // B takes it over once A's lease has run out, from A's cursor: another instance on PostgreSQL;
    // on SQLite (one instance per database file) the process that restarted in A's place.
    let b = match backend {
        Backend::Postgres => app.second_instance().await.1,
        Backend::Sqlite => std::sync::Arc::clone(&app.services),
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Counted once A's lease ran out, not at its abort: a fetch A had already sent may reach the
    // stand-in after the abort, and is A's, not B's.
    let fetched_by_a = app.stand_in.strava_api_log().to("/activities/{id}");
    wearlink::sync::run_due(&b, now_ms()).await.unwrap();
    assert_eq!(search(&app, &format!("Procedure?patient=Patient/{patient}")).await["total"], 250, "all, once each");
    let fetched = app.stand_in.strava_api_log().to("/activities/{id}");
    assert!(
        fetched - fetched_by_a <= 150,
        "B resumed at A's last page, not at the start: {fetched_by_a} + {}",
        fetched - fetched_by_a
    );
    assert_eq!(sync_of(&app, &endpoint).await["state"], "idle");
}

async fn an_expired_token_is_refreshed_once_and_the_backfill_goes_on(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, _, athlete) = strava_patient(&app).await;
    seed_activities(&app, athlete, 70_000, 30, 10);
    // The token runs out while a backfill and a webhook's fetch both need it.
    app.stand_in.expire_access_token(athlete);
    let fresh = app.stand_in.add_strava_activity(athlete, strava_activity_json(79_999, now_ms() / 1000 - 60, "Run"));
    deliver_strava(&app, &strava_event(athlete, fresh, "create", 1_764_064_400, json!({}))).await;

    app.sync().await;

    assert_eq!(app.stand_in.refreshes_of(athlete), 1, "one refresh, though two jobs met the 401");
    assert_eq!(search(&app, &format!("Procedure?patient=Patient/{patient}")).await["total"], 31);
    let (_, list) = app.get("/v1/wearables/connections").await;
    assert_eq!(list["connections"][0]["status"], "active");
}

async fn disconnecting_mid_backfill_stops_it_and_keeps_what_was_written(backend: Backend) {
    let app = TestApp::spawn_with(backend, Options { tweak: compressed_windows, ..Default::default() }).await;
    app.stand_in.set_strava_window(WINDOW);
    app.stand_in.set_strava_limits(100_000, 100_000, 12, 100_000);
    let (patient, endpoint, athlete) = strava_patient(&app).await;
    seed_activities(&app, athlete, 30_000, 40, 20);
    app.sync().await;
    let written = search(&app, &format!("Procedure?patient=Patient/{patient}")).await["total"].as_i64().unwrap();
    assert!(written > 0 && written < 40, "parked part-way: {written}");

    let admin = app.admin.clone();
    let (status, _) =
        app.send("DELETE", &format!("/v1/wearables/strava/connections/{patient}"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let calls = app.stand_in.strava_api_requests();
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    assert_eq!(app.sync().await, 0, "its queued work was dropped");
    assert_eq!(app.stand_in.strava_api_requests(), calls, "nothing more fetched");
    let after = search(&app, &format!("Procedure?patient=Patient/{patient}")).await["total"].as_i64().unwrap();
    assert_eq!(after, written, "history stays");
    assert_eq!(sync_of(&app, &endpoint).await["state"], "idle");
}

async fn the_reconciliation_pass_finds_an_activity_whose_webhook_never_came(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, _, athlete) = strava_patient(&app).await;
    seed_activities(&app, athlete, 60_000, 2, 3);
    app.sync().await;
    assert_eq!(search(&app, &format!("Procedure?patient=Patient/{patient}")).await["total"], 2);

    // An activity arrives at Strava, but its webhook never does.
    app.stand_in.add_strava_activity(athlete, strava_activity_json(69_999, now_ms() / 1000 - 3600, "Hike"));
    assert_eq!(app.sync().await, 0, "nothing due yet: the pass comes every 6 h");
    let in_seven_hours = now_ms() + 7 * 3600 * 1000;
    assert_eq!(wearlink::sync::run_due(&app.services, in_seven_hours).await.unwrap(), 1);
    assert_eq!(search(&app, &format!("Procedure?patient=Patient/{patient}")).await["total"], 3);
    assert_eq!(
        app.services.sync_counters.reconcile_found.load(std::sync::atomic::Ordering::Relaxed),
        6,
        "a session and its 5 measures"
    );
}

async fn a_worker_whose_lease_ran_out_cannot_overwrite_the_one_that_took_over(backend: Backend) {
    use wearlink::store::sync::JobOutcome;
    use wearlink::store::{EventOutcome, Lease};
    let app = TestApp::spawn(backend).await;
    let (patient, _, athlete) = strava_patient(&app).await;
    deliver_strava(&app, &strava_event(athlete, 1, "create", 1_764_064_500, json!({}))).await;
    let kinds = [wearlink::sync::WEBHOOK_EVENT];
    let now = now_ms();
    // Worker A claims the event, then pauses past its lease.
    let a = Lease { owner: "worker-a".into(), now, until: now + 1_000 };
    let claimed = app.services.store.claim_jobs(&kinds, &a, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let job = &claimed[0];
    let event_id = job.unique_key.clone().unwrap();
    assert!(
        app.services
            .store
            .claim_jobs(&kinds, &Lease { owner: "worker-b".into(), now, until: now + 1_000 }, 10)
            .await
            .unwrap()
            .is_empty(),
        "held"
    );
    // Worker B takes it over once A's lease ran out, and finishes it.
    let b = Lease { owner: "worker-b".into(), now: now + 1_001, until: now + 60_000 };
    assert_eq!(app.services.store.claim_jobs(&kinds, &b, 10).await.unwrap().len(), 1);
    let synced = EventOutcome {
        job: JobOutcome::Done,
        state: "synced".into(),
        attempts: 0,
        error: None,
        refs: Some(vec!["Procedure/x".into()]),
        processed_at: Some(now),
    };
    assert!(app.services.store.complete_event(&b, &job.id, &event_id, &synced).await.unwrap());
    // A wakes up and reports its own outcome: refused, B's stands.
    let late = EventOutcome { state: "dead".into(), error: Some("late".into()), refs: None, ..synced.clone() };
    assert!(!app.services.store.complete_event(&a, &job.id, &event_id, &late).await.unwrap(), "A's lease is lost");
    assert!(!app
        .services
        .store
        .complete_job(&a, &job.id, &JobOutcome::Retry { due_at: now, error: "late".into() }, &[])
        .await
        .unwrap());
    let (_, events) = app.get(&format!("/v1/wearables/events?patientId={patient}")).await;
    assert_eq!(events["events"][0]["state"], "synced", "{events}");
    assert_eq!(events["events"][0]["syncedRefs"], json!(["Procedure/x"]));
}

async fn an_event_whose_fetch_keeps_failing_is_dead_lettered_and_can_be_replayed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (patient, _, athlete) = strava_patient(&app).await;
    app.sync().await;
    let id = app.stand_in.add_strava_activity(athlete, strava_activity_json(88_888, now_ms() / 1000 - 600, "Run"));
    deliver_strava(&app, &strava_event(athlete, id, "create", 1_764_064_600, json!({}))).await;
    app.stand_in.set_strava_outage(Some(503));

    // Retried with backoff (the claim clock moved on past each), then given up.
    let events_only = [wearlink::sync::WEBHOOK_EVENT];
    let mut at = now_ms();
    for attempt in 1..=8 {
        assert_eq!(wearlink::sync::run_due_of(&app.services, at, &events_only).await.unwrap(), 1, "attempt {attempt}");
        let (_, events) = app.get(&format!("/v1/wearables/events?patientId={patient}")).await;
        assert_eq!(events["events"][0]["attempts"], attempt, "{events}");
        at += 2 * 3600 * 1000;
    }
    assert_eq!(
        wearlink::sync::run_due_of(&app.services, at, &events_only).await.unwrap(),
        0,
        "a dead letter is not retried"
    );
    let (_, dead) = app.get("/v1/wearables/events?state=dead").await;
    assert_eq!(dead["events"].as_array().unwrap().len(), 1, "{dead}");
    assert!(dead["events"][0]["lastError"].as_str().unwrap().contains("503"), "{dead}");
    assert_eq!(dead["events"][0]["object"]["object_id"], id);

    // Strava is back; the admin replays it.
    app.stand_in.set_strava_outage(None);
    let admin = app.admin.clone();
    let event_id = dead["events"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = app.send("POST", &format!("/v1/wearables/events/{event_id}/replay"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    app.sync().await;
    let (_, events) = app.get(&format!("/v1/wearables/events?patientId={patient}")).await;
    assert_eq!(events["events"][0]["state"], "synced", "{events}");
    assert_eq!(search(&app, &format!("Procedure?patient=Patient/{patient}")).await["total"], 1);
}
