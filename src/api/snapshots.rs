//! Snapshots of a LUN's store, through the target that serves it: taken, listed and deleted
//! while initiators keep writing (`POST`, `GET /v1/targets/{name}/luns/{lun}/snapshots`,
//! `DELETE .../snapshots/{snapshot}`). The volume's own lease covers them: no other process
//! needs to open it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::{Api, ApiError, ApiResult, bad_json, not_found};
use crate::storage::BlockStore;
use crate::storage::snapshots::{SnapshotError, SnapshotName, SnapshotSummary};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSnapshot {
    name: SnapshotName,
}

/// The store of LUN `lun` of target `name`, if it takes snapshots.
fn store_of(api: &Api, name: &str, lun: u16) -> ApiResult<Arc<dyn BlockStore>> {
    let lu = api
        .manager
        .registry
        .target(name)
        .and_then(|t| t.scsi.lun(lun))
        .ok_or_else(|| not_found(format!("target {name} has no LUN {lun}")))?;
    let store = lu.store().clone();
    match store.snapshots() {
        Some(_) => Ok(store),
        None => Err(ApiError(
            StatusCode::CONFLICT,
            format!("LUN {lun} of {name} takes no snapshots ({}; S3 volumes do, once open)", store.describe()),
        )),
    }
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> ApiError {
        let status = match &e {
            SnapshotError::Unsupported(_) | SnapshotError::Exists { .. } | SnapshotError::HasClones { .. } => {
                StatusCode::CONFLICT
            }
            SnapshotError::NotFound { .. } => StatusCode::NOT_FOUND,
            SnapshotError::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

pub(super) async fn list_snapshots(
    State(api): State<Api>,
    Path((name, lun)): Path<(String, u16)>,
) -> ApiResult<Json<Vec<SnapshotSummary>>> {
    let store = store_of(&api, &name, lun)?;
    Ok(Json(store.snapshots().expect("checked").snapshots()))
}

pub(super) async fn create_snapshot(
    State(api): State<Api>,
    Path((name, lun)): Path<(String, u16)>,
    body: Result<Json<NewSnapshot>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<SnapshotSummary>)> {
    let Json(new) = body.map_err(bad_json)?;
    let store = store_of(&api, &name, lun)?;
    let taken = store.snapshots().expect("checked").create_snapshot(new.name).await?;
    Ok((StatusCode::CREATED, Json(taken)))
}

pub(super) async fn delete_snapshot(
    State(api): State<Api>,
    Path((name, lun, snapshot)): Path<(String, u16, String)>,
) -> ApiResult<StatusCode> {
    let snapshot = SnapshotName::parse(&snapshot).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let store = store_of(&api, &name, lun)?;
    store.snapshots().expect("checked").delete_snapshot(&snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}
