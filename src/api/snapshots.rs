//! Snapshots of a LUN's store, through the target that serves it: taken, listed and deleted
//! while initiators keep writing (`POST`, `GET /v1/targets/{name}/luns/{lun}/snapshots`,
//! `DELETE .../snapshots/{snapshot}`). The volume's own lease covers them: no other process
//! needs to open it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::types::{ErrorBody, NewSnapshot};
use super::{Api, ApiError, ApiResult, Body, LunNumber, TargetName, bad_json, not_found};
use crate::config::{Config, LunConfig};
use crate::storage::BlockStore;
use crate::storage::snapshots::{SnapshotError, SnapshotName, SnapshotSummary};

/// `{snapshot}`.
#[derive(utoipa::IntoParams)]
#[into_params(names("snapshot"), parameter_in = Path)]
#[allow(dead_code)] // documents the path parameter; axum reads it as a String
pub(super) struct SnapshotParam(
    /// The snapshot's name.
    String,
);

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

#[utoipa::path(get, path = "/v1/targets/{name}/luns/{lun}/snapshots", tag = "snapshots",
    summary = "List the snapshots of a LUN's S3 volume", params(TargetName, LunNumber),
    responses((status = 200, body = Vec<SnapshotSummary>), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn list_snapshots(
    State(api): State<Api>,
    Path((name, lun)): Path<(String, u16)>,
) -> ApiResult<Json<Vec<SnapshotSummary>>> {
    let store = store_of(&api, &name, lun)?;
    Ok(Json(store.snapshots().expect("checked").snapshots()))
}

#[utoipa::path(post, path = "/v1/targets/{name}/luns/{lun}/snapshots", tag = "snapshots",
    summary = "Take a crash-consistent snapshot of a LUN's S3 volume (writes wait while its dirty chunks are merged)",
    params(TargetName, LunNumber), request_body = NewSnapshot,
    responses((status = 201, body = SnapshotSummary), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn create_snapshot(
    State(api): State<Api>,
    Path((name, lun)): Path<(String, u16)>,
    body: Body<NewSnapshot>,
) -> ApiResult<(StatusCode, Json<SnapshotSummary>)> {
    let Json(new) = body.map_err(bad_json)?;
    let store = store_of(&api, &name, lun)?;
    let taken = store.snapshots().expect("checked").create_snapshot(new.name).await?;
    Ok((StatusCode::CREATED, Json(taken)))
}

#[utoipa::path(delete, path = "/v1/targets/{name}/luns/{lun}/snapshots/{snapshot}", tag = "snapshots",
    summary = "Delete a snapshot; what only it held is deleted", params(TargetName, LunNumber, SnapshotParam),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn delete_snapshot(
    State(api): State<Api>,
    Path((name, lun, snapshot)): Path<(String, u16, String)>,
) -> ApiResult<StatusCode> {
    let snapshot = SnapshotName::parse(&snapshot).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let store = store_of(&api, &name, lun)?;
    if let Some(serving) = served_as_lun(&api.manager.config().await, &name, lun, &snapshot) {
        let why = format!("snapshot {snapshot} is served read-only as {serving}: remove that LUN first");
        return Err(ApiError(StatusCode::CONFLICT, why));
    }
    store.snapshots().expect("checked").delete_snapshot(&snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The LUN of this target that serves `snapshot` of the volume of LUN `lun` of target `name`,
/// if one does: deleted under it, every read of it would fail.
fn served_as_lun(config: &Config, name: &str, lun: u16, snapshot: &SnapshotName) -> Option<String> {
    let volume = config.targets.iter().find(|t| t.name == name)?.luns.iter().find(|l| l.lun == lun)?;
    let same_volume = |l: &LunConfig| l.url == volume.url && l.endpoint == volume.endpoint;
    config.targets.iter().find_map(|t| {
        let l = t.luns.iter().find(|l| same_volume(l) && l.snapshot.as_deref() == Some(snapshot.as_str()))?;
        Some(format!("LUN {} of {}", l.lun, t.name))
    })
}
