// Shared by both benches: renders the shipped SQL for a snapshot time.
pub fn render(q: &str) -> String {
    q.replace("{{ as_of }}", "CAST('2026-11-20T06:00:00Z' AS TIMESTAMP)")
        .replace("{{ as_of_date }}", "CAST('2026-11-20' AS DATE)")
}
pub fn args() -> (String, String, String) {
    let a: Vec<String> = std::env::args().collect();
    // data dir, sql dir, out file
    (a[1].clone(), a[2].clone(), a.get(3).cloned().unwrap_or_default())
}
