//! What an archive or a registry says an image is made of: OCI indexes and manifests,
//! docker `manifest.json`, media types. Loading ([`crate::ImageStore::load`]) and pulling
//! both turn these into a [`Plan`] the store then fetches and unpacks.

use std::io::Read;
use std::path::Path;

use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os, ToDockerV2S2};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::source::{json_reason, Compression, Source, MAX_JSON};
use crate::store::{is_sha256_hex, sha256_hex};
use crate::{normalize_name, ImageError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Docker layer media types (no OCI equivalent for the foreign ones).
const DOCKER_LAYER_PREFIX: &str = "application/vnd.docker.image.rootfs.";

/// A blob named by an archive: its path there and, when the archive says, digest and size.
pub(crate) struct BlobRef {
    pub(crate) path: String,
    pub(crate) digest: Option<String>,
    pub(crate) size: Option<u64>,
    pub(crate) media_type: String,
}

/// What an archive (or a registry manifest) describes, whatever its format.
pub(crate) struct Plan {
    /// Manifest (and index) documents, already verified: stored as blobs too.
    pub(crate) documents: Vec<(String, Vec<u8>)>,
    pub(crate) config: BlobRef,
    pub(crate) layers: Vec<BlobRef>,
    pub(crate) names: Vec<String>,
}

/// Whether `mt` is `kind` in its OCI spelling or in docker's (manifest list v2 for an
/// index, schema 2 for a manifest).
fn is_media_type(mt: &str, kind: MediaType) -> bool {
    mt == kind.as_ref() || kind.to_docker_v2s2().is_ok_and(|docker| docker == mt)
}

pub(crate) fn is_index_media_type(mt: &str) -> bool {
    is_media_type(mt, MediaType::ImageIndex)
}

pub(crate) fn is_manifest_media_type(mt: &str) -> bool {
    is_media_type(mt, MediaType::ImageManifest)
}

/// The `Accept` header of a manifest request: indexes and manifests, OCI and docker.
pub(crate) fn manifest_accept() -> String {
    [MediaType::ImageIndex, MediaType::ImageManifest]
        .iter()
        .flat_map(|m| [Ok(m.as_ref()), m.to_docker_v2s2()])
        .filter_map(Result::ok)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The compression a layer's media type declares, `None` when it declares none we know.
/// Only a hint: the content's magic bytes decide.
pub(crate) fn media_type_compression(mt: &str) -> Option<Compression> {
    match MediaType::from(mt) {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(Compression::None),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Some(Compression::Gzip)
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
            Some(Compression::Zstd)
        }
        // Docker's `rootfs.diff.tar.gzip` and `rootfs.foreign.diff.tar.gzip`.
        MediaType::Other(docker) if docker.starts_with(DOCKER_LAYER_PREFIX) => {
            if docker.ends_with(".tar.gzip") {
                Some(Compression::Gzip)
            } else if docker.ends_with(".tar.zstd") {
                Some(Compression::Zstd)
            } else if docker.ends_with(".tar") {
                Some(Compression::None)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Reads a small document blob by digest, verifying size and digest.
fn read_document(source: &Source, desc: &Descriptor) -> Result<(String, Vec<u8>), ImageError> {
    let hex = descriptor_hex(source, desc)?;
    if desc.size() > MAX_JSON {
        return Err(ImageError::invalid(
            source.path(),
            format!("document sha256:{hex} is too large ({} bytes)", desc.size()),
        ));
    }
    let path = format!("blobs/sha256/{hex}");
    let (reader, _) = source.read(&path)?;
    let mut bytes = Vec::new();
    reader
        .take(desc.size() + 1)
        .read_to_end(&mut bytes)
        .map_err(ImageError::io(source.path()))?;
    if bytes.len() as u64 != desc.size() {
        return Err(ImageError::SizeMismatch {
            path: source.path().to_path_buf(),
            what: path,
            expected: desc.size(),
            actual: bytes.len() as u64,
        });
    }
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != hex {
        return Err(ImageError::DigestMismatch {
            path: source.path().to_path_buf(),
            what: path,
            expected: format!("sha256:{hex}"),
            actual: format!("sha256:{actual}"),
        });
    }
    Ok((hex, bytes))
}

fn descriptor_hex(source: &Source, desc: &Descriptor) -> Result<String, ImageError> {
    let digest = desc.digest().to_string();
    sha256_hex(&digest).map(str::to_string).ok_or_else(|| {
        ImageError::invalid(
            source.path(),
            format!("unsupported digest {digest} (only sha256)"),
        )
    })
}

fn descriptor_names(desc: &Descriptor) -> Vec<String> {
    let Some(ann) = desc.annotations() else {
        return Vec::new();
    };
    ann.get(CONTAINERD_NAME)
        .or_else(|| ann.get(REF_NAME))
        .map(|n| vec![n.clone()])
        .unwrap_or_default()
}

/// Picks one manifest of an index: linux/amd64 among platform variants, else the one whose name
/// is `wanted`, else the only one.
pub(crate) fn pick<'a>(
    origin: &Path,
    manifests: &'a [Descriptor],
    wanted: Option<&str>,
) -> Result<&'a Descriptor, ImageError> {
    let usable: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| {
            let mt = d.media_type().to_string();
            is_index_media_type(&mt) || is_manifest_media_type(&mt)
        })
        .collect();
    let with_platform = usable.iter().any(|d| d.platform().is_some());
    let candidates: Vec<&Descriptor> = if with_platform {
        usable
            .into_iter()
            .filter(|d| {
                d.platform()
                    .as_ref()
                    .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
            })
            .collect()
    } else {
        usable
    };
    match candidates.as_slice() {
        [] => Err(ImageError::invalid(
            origin,
            "index holds no linux/amd64 image manifest",
        )),
        [one] => Ok(one),
        many => {
            let wanted = wanted.and_then(|w| normalize_name(w).ok());
            wanted
                .and_then(|w| {
                    many.iter().copied().find(|d| {
                        descriptor_names(d)
                            .iter()
                            .any(|n| normalize_name(n).ok().as_deref() == Some(w.as_str()))
                    })
                })
                .ok_or_else(|| {
                    ImageError::invalid(
                        origin,
                        format!(
                            "index holds {} images; pass the name of the one to load",
                            many.len()
                        ),
                    )
                })
        }
    }
}

pub(crate) fn oci_plan(source: &Source, wanted: Option<&str>) -> Result<Plan, ImageError> {
    let (index, _): (ImageIndex, _) = source.read_json("index.json")?;
    let top = pick(source.path(), index.manifests(), wanted)?;
    let names = descriptor_names(top);
    let mut documents = Vec::new();
    let mut desc = top.clone();
    // Nested indexes (a multi-platform image inside a layout): follow a few levels at most.
    for _ in 0..4 {
        let (hex, bytes) = read_document(source, &desc)?;
        documents.push((hex.clone(), bytes.clone()));
        if !is_index_media_type(desc.media_type().as_ref()) {
            let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
                ImageError::invalid(
                    source.path(),
                    format!("manifest sha256:{hex}: {}", json_reason(&e)),
                )
            })?;
            let blob = |d: &Descriptor| -> Result<BlobRef, ImageError> {
                let hex = descriptor_hex(source, d)?;
                Ok(BlobRef {
                    path: format!("blobs/sha256/{hex}"),
                    digest: Some(hex),
                    size: Some(d.size()),
                    media_type: d.media_type().to_string(),
                })
            };
            return Ok(Plan {
                documents,
                config: blob(manifest.config())?,
                layers: manifest
                    .layers()
                    .iter()
                    .map(blob)
                    .collect::<Result<_, _>>()?,
                names,
            });
        }
        let nested: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::invalid(
                source.path(),
                format!("index sha256:{hex}: {}", json_reason(&e)),
            )
        })?;
        desc = pick(source.path(), nested.manifests(), wanted)?.clone();
    }
    Err(ImageError::invalid(
        source.path(),
        "indexes nested too deeply",
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub(crate) fn docker_plan(source: &Source, wanted: Option<&str>) -> Result<Plan, ImageError> {
    let (manifests, _): (Vec<DockerManifest>, _) = source.read_json("manifest.json")?;
    let tags = |m: &DockerManifest| m.repo_tags.clone().unwrap_or_default();
    let chosen = match manifests.as_slice() {
        [] => {
            return Err(ImageError::invalid(
                source.path(),
                "manifest.json lists no image",
            ))
        }
        [one] => one,
        many => {
            let wanted = wanted.and_then(|w| normalize_name(w).ok());
            wanted
                .and_then(|w| {
                    many.iter().find(|m| {
                        tags(m)
                            .iter()
                            .any(|t| normalize_name(t).ok().as_deref() == Some(w.as_str()))
                    })
                })
                .ok_or_else(|| {
                    ImageError::invalid(
                        source.path(),
                        format!(
                            "archive holds {} images; pass the name of the one to load",
                            many.len()
                        ),
                    )
                })?
        }
    };
    // Docker names files after their digest ("<hex>.json", "blobs/sha256/<hex>"): verify that.
    let digest_in_path = |p: &str| -> Option<String> {
        let file = p.rsplit('/').next()?;
        let hex = file.strip_suffix(".json").unwrap_or(file);
        is_sha256_hex(hex).then(|| hex.to_string())
    };
    let blob = |p: &String, is_config: bool| BlobRef {
        path: p.clone(),
        digest: if is_config || p.contains("sha256/") {
            digest_in_path(p)
        } else {
            None
        },
        size: None,
        media_type: String::new(),
    };
    Ok(Plan {
        documents: Vec::new(),
        config: blob(&chosen.config, true),
        layers: chosen.layers.iter().map(|p| blob(p, false)).collect(),
        names: tags(chosen),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_known_in_both_spellings() {
        assert!(is_index_media_type(
            "application/vnd.oci.image.index.v1+json"
        ));
        assert!(is_index_media_type(
            "application/vnd.docker.distribution.manifest.list.v2+json"
        ));
        assert!(is_manifest_media_type(
            "application/vnd.oci.image.manifest.v1+json"
        ));
        assert!(is_manifest_media_type(
            "application/vnd.docker.distribution.manifest.v2+json"
        ));
        assert!(!is_manifest_media_type(
            "application/vnd.oci.image.index.v1+json"
        ));
        assert!(!is_index_media_type(
            "application/vnd.docker.distribution.manifest.v1+prettyjws"
        ));
        let accept = manifest_accept();
        for mt in [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ] {
            assert!(accept.split(", ").any(|a| a == mt), "{accept}");
        }
    }

    #[test]
    fn layer_media_types_declare_their_compression() {
        for (mt, want) in [
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            ("application/octet-stream", None),
            ("", None),
        ] {
            assert_eq!(media_type_compression(mt), want, "{mt}");
        }
    }
}
