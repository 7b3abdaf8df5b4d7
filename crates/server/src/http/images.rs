//! The image routes under `/api/v1`: versions and their `latest` pointer, manifests, chunk
//! upload and download, gc. Routes as documented in `metalcast_proto::api`.

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::StreamExt;
use metalcast_image::MAX_CHUNK_LEN;
use metalcast_proto::image::{
    ChunkList, ChunkRef, Digest, ImageRef, ImageSummary, MAX_CHUNKS_PER_FETCH, Manifest,
    SignedManifest, validate_image_name,
};
use metalcast_proto::{Event, GcSummary, ImageVersions, Level, Phase, SetLatest};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::{AdminOnly, ApiJson, Failure, ImageReader, SharedState, now_ms, with_image_store};
use crate::auth::Principal;
use crate::images::GC_GRACE;

/// Largest manifest or chunk list accepted: a manifest lists ~16k chunks per GiB of image at
/// the default chunk size, ~200 bytes of JSON each, so this covers images of ~20 GiB.
pub const IMAGE_JSON_LIMIT: usize = 64 << 20;

/// Largest chunk upload: zstd's worst case for the largest chunk the format allows
/// (incompressible data grows by len/256 plus frame headers).
pub const CHUNK_BODY_LIMIT: usize = (MAX_CHUNK_LEN + MAX_CHUNK_LEN / 256) as usize + 4096;

/// Largest body of a fetch of several chunks: the most it may list, with room for spacing.
const FETCH_JSON_LIMIT: usize = 128 * MAX_CHUNKS_PER_FETCH + 1024;

/// The version word that means "whatever `latest` points at"; no version may be called so.
pub const LATEST: &str = "latest";

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route(
            "/images",
            get(list)
                .post(import)
                .layer(DefaultBodyLimit::max(IMAGE_JSON_LIMIT)),
        )
        .route("/images/gc", post(gc))
        .route("/images/{name}", get(versions))
        .route("/images/{name}/latest", put(set_latest))
        .route("/images/{name}/{version}/manifest", get(manifest))
        .route(
            "/chunks/missing",
            post(missing).layer(DefaultBodyLimit::max(IMAGE_JSON_LIMIT)),
        )
        .route(
            "/chunks/fetch",
            post(fetch_many).layer(DefaultBodyLimit::max(FETCH_JSON_LIMIT)),
        )
        .route(
            "/chunks/{hash}",
            get(download)
                .head(download)
                .put(upload)
                .layer(DefaultBodyLimit::max(CHUNK_BODY_LIMIT)),
        )
}

async fn list(
    State(state): State<SharedState>,
    _: AdminOnly,
) -> Result<Json<Vec<ImageSummary>>, Failure> {
    let all = with_image_store(&state.images, |s| s.manifests()).await?;
    Ok(Json(all.iter().map(ImageSummary::from).collect()))
}

async fn versions(
    State(state): State<SharedState>,
    _: AdminOnly,
    Path(name): Path<String>,
) -> Result<Json<ImageVersions>, Failure> {
    check_name("name", &name)?;
    Ok(Json(image_versions(&state, name).await?))
}

/// Every version of `name`, oldest first, with its `latest`; 404 when there is none.
async fn image_versions(state: &SharedState, name: String) -> Result<ImageVersions, Failure> {
    let wanted = name.clone();
    let all = with_image_store(&state.images, |s| s.manifests()).await?;
    let versions: Vec<ImageSummary> = all
        .iter()
        .filter(|m| m.manifest.name == wanted)
        .map(ImageSummary::from)
        .collect();
    if versions.is_empty() {
        return Err(Failure::not_found(format!("no image {name}")));
    }
    let latest = state.store.image_latest(&name).await?;
    Ok(ImageVersions {
        name,
        latest,
        versions,
    })
}

async fn manifest(
    State(state): State<SharedState>,
    ImageReader(who): ImageReader,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<SignedManifest>, Failure> {
    check_name("name", &name)?;
    let version = if version == LATEST {
        None
    } else {
        check_name("version", &version)?;
        Some(version)
    };
    let wanted = ImageRef { name, version };
    let signed = resolve(&state, &wanted)
        .await?
        .ok_or_else(|| Failure::not_found(unresolved(&wanted)))?;
    if let Principal::Node(mac) = who {
        let m = &signed.manifest;
        let message = format!(
            "fetching image {}@{} ({} chunks, {})",
            m.name,
            m.version,
            m.chunks.len(),
            mib(m.stored_size())
        );
        tracing::info!(%mac, "{message}");
        state
            .store
            .add_event(&Event {
                mac,
                phase: Phase::Image,
                level: Level::Info,
                message,
                at_ms: now_ms(),
            })
            .await?;
    }
    Ok(Json(signed))
}

/// The manifest an image reference names now: its pinned version, or what `latest` points
/// at. `None` when there is no such version (or no `latest`).
pub(super) async fn resolve(
    state: &SharedState,
    r: &ImageRef,
) -> Result<Option<SignedManifest>, Failure> {
    let version = match &r.version {
        Some(v) => v.clone(),
        None => match state.store.image_latest(&r.name).await? {
            Some(v) => v,
            None => return Ok(None),
        },
    };
    let name = r.name.clone();
    with_image_store(&state.images, move |s| s.manifest(&name, &version)).await
}

/// Why [`resolve`] found nothing, for people.
pub(super) fn unresolved(r: &ImageRef) -> String {
    match &r.version {
        Some(v) => format!("image {} has no version {v}", r.name),
        None => format!("image {} has no latest version", r.name),
    }
}

async fn import(
    State(state): State<SharedState>,
    _: AdminOnly,
    ApiJson(manifest): ApiJson<Manifest>,
) -> Result<(StatusCode, Json<SignedManifest>), Failure> {
    if manifest.version == LATEST {
        return Err(Failure::bad_request(format!(
            "version: {LATEST:?} is reserved: it names the version nodes following the image get"
        )));
    }
    metalcast_image::validate_manifest(&manifest)
        .map_err(|e| Failure::bad_request(format!("manifest: {e}")))?;
    let key = state.images.key.clone();
    let checked = with_image_store(&state.images, move |s| {
        for (index, chunk) in manifest.chunks.iter().enumerate() {
            if let Some(problem) = stored_len_problem(index, chunk, s.chunk_len(&chunk.hash)?) {
                return Ok(Err(Failure::bad_request(problem)));
            }
        }
        let signed = match metalcast_image::sign_manifest(manifest, &key) {
            Ok(signed) => signed,
            Err(e) => return Ok(Err(Failure::bad_request(format!("manifest: {e}")))),
        };
        let new = s.put_manifest(&signed)?;
        Ok(Ok((signed, new)))
    })
    .await?;
    let (signed, new) = checked?;
    let (name, version) = (&signed.manifest.name, &signed.manifest.version);
    // A new version becomes latest; a repeated upload only fills in a missing pointer (the
    // first attempt may have stopped between storing the manifest and setting it).
    state.store.set_image_latest(name, version, !new).await?;
    if new {
        tracing::info!(id = %signed.id, "image {name}@{version} imported");
        Ok((StatusCode::CREATED, Json(signed)))
    } else {
        Ok((StatusCode::OK, Json(signed)))
    }
}

/// What is wrong with chunk `index` of a manifest given the size of its stored file, if
/// anything.
fn stored_len_problem(index: usize, chunk: &ChunkRef, stored: Option<u64>) -> Option<String> {
    match stored {
        None => Some(format!(
            "chunks[{index}]: chunk {} is not stored; upload it first",
            chunk.hash
        )),
        Some(len) if len != chunk.stored_len => Some(format!(
            "chunks[{index}].stored_len: {} but the stored chunk {} is {len} bytes",
            chunk.stored_len, chunk.hash
        )),
        Some(_) => None,
    }
}

async fn set_latest(
    State(state): State<SharedState>,
    _: AdminOnly,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetLatest>,
) -> Result<Json<ImageVersions>, Failure> {
    check_name("name", &name)?;
    check_name("version", &body.version)?;
    let wanted = ImageRef {
        name: name.clone(),
        version: Some(body.version.clone()),
    };
    if resolve(&state, &wanted).await?.is_none() {
        return Err(Failure::not_found(unresolved(&wanted)));
    }
    if state
        .store
        .set_image_latest(&name, &body.version, false)
        .await?
    {
        tracing::info!("image {name}: latest is now {}", body.version);
    }
    Ok(Json(image_versions(&state, name).await?))
}

async fn gc(State(state): State<SharedState>, _: AdminOnly) -> Result<Json<GcSummary>, Failure> {
    let report = with_image_store(&state.images, |s| s.gc(GC_GRACE)).await?;
    Ok(Json(GcSummary {
        chunks_removed: report.chunks_removed,
        bytes_freed: report.bytes_freed,
    }))
}

async fn missing(
    State(state): State<SharedState>,
    _: AdminOnly,
    ApiJson(list): ApiJson<ChunkList>,
) -> Result<Json<ChunkList>, Failure> {
    let chunks = with_image_store(&state.images, move |s| s.missing(&list.chunks)).await?;
    Ok(Json(ChunkList { chunks }))
}

async fn upload(
    State(state): State<SharedState>,
    _: AdminOnly,
    Path(hash): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, Failure> {
    let hash = parse_hash(&hash)?;
    let body = body.map_err(|e| Failure::new(e.status(), e.body_text()))?;
    state
        .images
        .check_room(body.len() as u64)
        .map_err(|e| Failure::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()))?;
    let new = with_image_store(&state.images, move |s| s.put(&hash, &body)).await?;
    Ok(if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}

async fn download(
    State(state): State<SharedState>,
    _: ImageReader,
    Path(hash): Path<String>,
    request: Request,
) -> Result<Response, Failure> {
    let hash = parse_hash(&hash)?;
    if !with_image_store(&state.images, move |s| s.has(&hash)).await? {
        return Err(Failure::not_found(format!("no chunk {hash}")));
    }
    let path = state.images.store.chunk_path(&hash);
    match ServeFile::new(path).oneshot(request).await {
        Ok(response) => Ok(response.map(Body::new).into_response()),
        Err(never) => match never {},
    }
}

/// Several chunks in one answer, streamed file by file: an agent fetching a run of small
/// chunks pays one round trip and one request's overhead for all of them.
async fn fetch_many(
    State(state): State<SharedState>,
    _: ImageReader,
    ApiJson(list): ApiJson<ChunkList>,
) -> Result<Response, Failure> {
    let hashes = list.chunks;
    if hashes.is_empty() || hashes.len() > MAX_CHUNKS_PER_FETCH {
        return Err(Failure::bad_request(format!(
            "chunks: {} listed; ask for 1 to {MAX_CHUNKS_PER_FETCH}",
            hashes.len()
        )));
    }
    let (hashes, total) = with_image_store(&state.images, move |s| {
        let mut total = 0;
        for h in &hashes {
            match s.chunk_len(h)? {
                Some(len) => total += len,
                None => return Ok(Err(*h)),
            }
        }
        Ok(Ok((hashes, total)))
    })
    .await?
    .map_err(|absent| Failure::not_found(format!("no chunk {absent}")))?;
    let store = state.images.store.clone();
    let files = futures_util::stream::iter(hashes).then(move |hash| {
        let store = store.clone();
        async move {
            // gc may remove a chunk after the check above: the body then ends short of its
            // Content-Length, which the client sees as a cut connection and tries again.
            let read = tokio::task::spawn_blocking(move || store.get(&hash))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r.map_err(std::io::Error::other));
            if let Err(e) = &read {
                tracing::warn!(%hash, error = %e, "a fetch of several chunks was cut short");
            }
            read.map(Bytes::from)
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, total.to_string()),
        ],
        Body::from_stream(files),
    )
        .into_response())
}

fn check_name(what: &'static str, value: &str) -> Result<(), Failure> {
    validate_image_name(what, value).map_err(|e| Failure::bad_request(e.to_string()))
}

fn parse_hash(text: &str) -> Result<Digest, Failure> {
    text.parse()
        .map_err(|e: metalcast_proto::image::HexError| Failure::bad_request(format!("chunk: {e}")))
}

/// Bytes as MiB with one decimal: `12.5 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_lengths_must_match() {
        let chunk = ChunkRef {
            hash: Digest([1; 32]),
            offset: 0,
            len: 10,
            stored_len: 7,
            entry_start: 0,
        };
        assert_eq!(stored_len_problem(0, &chunk, Some(7)), None);
        let short = stored_len_problem(2, &chunk, Some(6)).unwrap();
        assert!(short.starts_with("chunks[2].stored_len: 7 but"), "{short}");
        let absent = stored_len_problem(3, &chunk, None).unwrap();
        assert!(absent.starts_with("chunks[3]: chunk 0101"), "{absent}");
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(mib(0), "0.0 MiB");
        assert_eq!(mib(3 << 19), "1.5 MiB");
    }

    #[test]
    fn the_largest_chunk_fits_the_upload_limit() {
        let len = usize::try_from(MAX_CHUNK_LEN).unwrap();
        assert!(zstd::zstd_safe::compress_bound(len) <= CHUNK_BODY_LIMIT);
    }
}
