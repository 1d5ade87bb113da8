//! `GET /health` (process, database and broker state) and `GET /ready` (whether
//! this instance should get traffic). Neither shows a credential.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::ApiState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn database_ok(state: &ApiState) -> Result<(), String> {
    let check = async {
        match &state.store {
            super::Store::Postgres(pg) => {
                let client = pg
                    .probe_pool
                    .get()
                    .await
                    .map_err(|e| format!("no database connection: {e}"))?;
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| format!("database query failed: {e}"))?;
            }
            super::Store::Sqlite(reader) => {
                reader
                    .read(|c| c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())))
                    .await
                    .map_err(|e| format!("embedded store read failed: {e}"))?;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(r) => r,
        Err(_) => Err("database did not answer in time".into()),
    }
}

/// Process, database and broker state; 503 with a reason when either is down.
#[utoipa::path(get, path = "/health", tag = "probes", responses((status = 200, description = "healthy"), (status = 503, description = "unhealthy, with a reason")))]
pub async fn health(state: web::Data<ApiState>) -> HttpResponse {
    let db = database_ok(&state).await;
    let broker = state.broker.is_connected();
    let body = |status: &str, reason: Option<String>| {
        json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "database": state.database_display,
            "database_state": if db.is_ok() { "up" } else { "down" },
            "broker_state": if broker { "connected" } else { "disconnected" },
            "reason": reason,
        })
    };
    match (&db, broker) {
        (Ok(()), true) => HttpResponse::Ok().json(body("healthy", None)),
        (Err(e), _) => HttpResponse::ServiceUnavailable().json(body("unhealthy", Some(e.clone()))),
        (Ok(()), false) => HttpResponse::ServiceUnavailable().json(body(
            "unhealthy",
            Some("not connected to the broker".into()),
        )),
    }
}

/// Whether this instance should get traffic: 503 while starting, stopping, or without a database.
#[utoipa::path(get, path = "/ready", tag = "probes", responses((status = 200, description = "ready"), (status = 503, description = "not ready, with a reason")))]
pub async fn ready(state: web::Data<ApiState>) -> HttpResponse {
    if !state.lifecycle.is_ready() {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "ready": false, "reason": state.lifecycle.phase() }));
    }
    match database_ok(&state).await {
        Ok(()) => HttpResponse::Ok().json(json!({ "ready": true })),
        Err(e) => HttpResponse::ServiceUnavailable().json(json!({ "ready": false, "reason": e })),
    }
}
