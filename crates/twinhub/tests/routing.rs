//! The routes file at start: a file a hub cannot use is refused before it serves, with the route and the
//! place in its condition named, as a query error names them.

mod support;

use std::process::Command;

fn serve_with_routes(routes: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(&file, routes).unwrap();
    let address = support::free_loopback_address().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_twinhub"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--hostname", &address, "--bind", &address, "--routes"])
        .arg(&file)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_routes_file_the_hub_cannot_use_is_refused_at_start() {
    let (started, error) = serve_with_routes(
        "[[routes]]\nname = \"hot\"\nsource = \"DeviceMessages\"\ncondition = \"$body.temperature >\"\nendpoint = \"events\"\n",
    );
    assert!(!started);
    assert!(error.contains("route \"hot\"") && error.contains("column"), "{error}");

    let (started, error) =
        serve_with_routes("[[routes]]\nname = \"hot\"\nsource = \"DeviceMessages\"\nendpoint = \"somewhere\"\n");
    assert!(!started);
    assert!(
        error.contains("somewhere") && error.contains("does not exist"),
        "{error}"
    );

    let (started, error) =
        serve_with_routes("[[routes]]\nname = \"hot\"\nsource = \"Nothing\"\nendpoint = \"events\"\n");
    assert!(!started);
    assert!(
        error.contains("not a valid routes file") && error.contains("Nothing"),
        "{error}"
    );
}
