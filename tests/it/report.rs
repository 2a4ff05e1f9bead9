//! `report.html`: its sections, that it is self-contained, and Chromium's rendering of it (not
//! blank, no network request made by the page).

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Renders `page` with headless Chromium: the screenshot (PNG) and the URLs the *page* asked
/// for (from Chromium's net log; the browser's own background requests have no page origin).
fn render(page: &Path, png: &Path) -> Vec<String> {
    need("chromium", "chromium");
    let netlog = png.with_extension("netlog.json");
    let o = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1000,2400",
        ])
        .arg(format!("--log-net-log={}", netlog.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "chromium failed: {}", stderr(&o));
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&netlog).unwrap()).unwrap();
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].clone();
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == start_job)
        .filter(|e| e["params"]["initiator"] != "not an origin")
        .filter_map(|e| e["params"]["url"].as_str().map(String::from))
        .filter(|u| !u.starts_with("file:") && !u.starts_with("data:"))
        .collect()
}

/// Share of pixels that are not (near) white.
fn ink(png: &Path) -> f64 {
    let decoder = png::Decoder::new(std::fs::File::open(png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let channels = info.color_type.samples();
    let px = bytes.chunks(channels);
    let total = px.len() as f64;
    px.filter(|p| p.iter().take(3).any(|c| *c < 235)).count() as f64 / total
}

#[test]
fn the_report_is_one_self_contained_page_that_chromium_renders() {
    let p = Project::new(true);
    let out = p.ok(&["run", "--as-of", AS_OF, "--run-id", "r1"]);
    assert!(out.contains("runs/r1/report.html"), "{out}");
    let page = p.path("runs/r1/report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    for section in [
        "<h2>Stages</h2>",
        "<h2>Data quality</h2>",
        "<h2>Models</h2>",
        "<h2>Fairness",
        "<h2>Drift",
        "<h2>Scores of the current customers</h2>",
    ] {
        assert!(html.contains(section), "no `{section}`");
    }
    for needle in [
        "train_churn",
        "auc &gt;= 0.75",
        "churn_v1 production",
        "sessions_30d",
        "gender",
        "<svg",
    ] {
        assert!(html.contains(needle), "no `{needle}` in the report");
    }
    for banned in [
        "http://", "https://", "<script", "<link", "@import", "src=\"",
    ] {
        assert!(
            !html.contains(banned),
            "the report refers to something outside it: `{banned}`"
        );
    }
    // Chromium: a page with ink on it, and no request made by the page.
    let shot = p.path("report.png");
    let requests = render(&page, &shot);
    assert!(
        requests.is_empty(),
        "the page made network requests: {requests:?}"
    );
    let ink = ink(&shot);
    assert!(
        ink > 0.02,
        "the screenshot is blank ({:.2}% ink)",
        ink * 100.0
    );
    // The detector itself: a page that loads an image from the network is caught.
    let control = p.path("control.html");
    std::fs::write(
        &control,
        "<html><body><img src=\"http://example.invalid/x.png\"></body></html>",
    )
    .unwrap();
    let requests = render(&control, &p.path("control.png"));
    assert_eq!(requests, ["http://example.invalid/x.png"]);
    // MLPIPE_REPORT_SCREENSHOT=path keeps the screenshot (docs/report.png is made this way).
    if let Ok(keep) = std::env::var("MLPIPE_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
