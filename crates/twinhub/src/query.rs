//! `twinhub query`: every page of a query, as a table (twins: one line each; rows: one column per
//! member) or as one JSON array.

use crate::client::ServiceClient;
use crate::HubAccess;

pub async fn run(sql: &str, page_size: Option<usize>, json: bool, access: &HubAccess) -> anyhow::Result<()> {
    let client = ServiceClient::new(access)?;
    let mut items = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let (page, next) = client.query_page(sql, page_size, continuation.as_deref()).await?;
        items.extend(page);
        match next {
            Some(token) => continuation = Some(token),
            None => break,
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::Value::Array(items))?);
        return Ok(());
    }
    let is_twins = items
        .iter()
        .all(|item| item.get("deviceId").is_some() && item.get("properties").is_some());
    let (headers, rows) = if is_twins && !items.is_empty() {
        twin_rows(&items)
    } else {
        raw_rows(&items)
    };
    print_rows(&headers, &rows);
    eprintln!("{} result(s)", items.len());
    Ok(())
}

fn twin_rows(items: &[serde_json::Value]) -> (Vec<String>, Vec<Vec<String>>) {
    let headers = ["deviceId", "status", "connectionState", "version", "tags"]
        .map(String::from)
        .to_vec();
    let rows = items
        .iter()
        .map(|twin| {
            vec![
                cell(&twin["deviceId"]),
                cell(&twin["status"]),
                cell(&twin["connectionState"]),
                cell(&twin["version"]),
                cell(&twin["tags"]),
            ]
        })
        .collect();
    (headers, rows)
}

/// Columns in the order members first appear.
fn raw_rows(items: &[serde_json::Value]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut headers: Vec<String> = Vec::new();
    for item in items {
        for key in item.as_object().into_iter().flat_map(|o| o.keys()) {
            if !headers.contains(key) {
                headers.push(key.clone());
            }
        }
    }
    let rows = items
        .iter()
        .map(|item| headers.iter().map(|h| cell(&item[h.as_str()])).collect())
        .collect();
    (headers, rows)
}

fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_rows(headers: &[String], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(String::len).collect();
    for row in rows {
        for (width, text) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers);
    for row in rows {
        line(row);
    }
}
