//! The explain view: what a machine type is served of one upstream manifest, and why.
//!
//! One [`Explanation`], built once from what a pull reads (the upstream manifest, the machine type, the children's
//! NVIDIA requirements) by the same functions the registry filters with; `/admin/explain`, the admin page's matrix
//! and `metahub explain` (its `--json` and its table) only render it.

use crate::error::{Error, Result};
use crate::filter::{self, Index, Verdict};
use crate::machine::MachineType;
use crate::nvidia::GpuRequirements;
use crate::ports::Manifest;
use crate::reference::{Digest, ImageRef};
use serde_json::{Value, json};

/// Why a single manifest is not filtered.
pub const PASSTHROUGH: &str = "a single manifest, not an index: it passes through verbatim to every machine type";

/// One upstream manifest explained for one machine type.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub image: ImageRef,
    /// The upstream's digest of the manifest.
    pub digest: Digest,
    /// The upstream's media type of the manifest.
    pub media_type: String,
    pub machine_type: MachineType,
    pub outcome: Outcome,
}

/// What the manifest is for the machine type.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A single manifest, not an index: it passes through verbatim to every machine type ([`PASSTHROUGH`]).
    Passthrough,
    /// An index or manifest list.
    Index {
        /// Every entry with its verdict, in index order.
        verdicts: Vec<Verdict>,
        /// What a pull of the index answers: the filtered index's digest, or the error when nothing fits.
        pull: Result<Digest, Error>,
    },
}

impl Explanation {
    /// Explains `manifest` (as the upstream serves `image`) for `machine`, with the NVIDIA requirements of an index's
    /// children as read from their configs. Fails only on an index that does not parse (the upstream's fault).
    pub fn new(
        image: &ImageRef,
        manifest: &Manifest,
        machine: &MachineType,
        requirements: &GpuRequirements,
    ) -> Result<Explanation> {
        let outcome = if filter::is_index_media_type(&manifest.media_type) {
            let index = Index::parse(&manifest.bytes)?;
            Outcome::Index {
                verdicts: filter::explain_gpu(&index, machine, requirements),
                pull: filter::filter_index_gpu(manifest, machine, requirements).map(|filtered| filtered.digest),
            }
        } else {
            Outcome::Passthrough
        };
        Ok(Explanation {
            image: image.clone(),
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
            machine_type: machine.clone(),
            outcome,
        })
    }

    /// The verdicts of the entries a pull is served, in index order; none for a single manifest.
    pub fn served(&self) -> impl Iterator<Item = &Verdict> {
        let verdicts = match &self.outcome {
            Outcome::Passthrough => &[][..],
            Outcome::Index { verdicts, .. } => verdicts,
        };
        verdicts.iter().filter(|v| v.served)
    }

    /// The explanation as `/admin/explain`, each cell of `/admin/matrix` and `metahub explain --json` answer it.
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "image": self.image.to_string(),
            "digest": self.digest.to_string(),
            "mediaType": self.media_type,
            "machineType": self.machine_type.to_json(),
        });
        match &self.outcome {
            Outcome::Passthrough => {
                out["index"] = json!(false);
                out["passthrough"] = json!(true);
                out["reason"] = json!(PASSTHROUGH);
            }
            Outcome::Index { verdicts, pull } => {
                let (filtered_digest, error) = match pull {
                    Ok(digest) => (Some(digest.to_string()), None),
                    Err(e) => (None, Some(json!({"code": e.code.as_str(), "message": e.message}))),
                };
                out["index"] = json!(true);
                out["entries"] = verdicts.iter().map(Verdict::to_json).collect();
                out["served"] = self.served().map(|v| json!(v.entry.digest)).collect();
                out["filteredDigest"] = json!(filtered_digest);
                out["error"] = json!(error);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{OCI_INDEX, OCI_MANIFEST};
    use crate::machine::MatchMode;
    use bytes::Bytes;

    fn manifest(media_type: &str, body: Value) -> Manifest {
        let bytes = serde_json::to_vec(&body).unwrap();
        Manifest { digest: Digest::sha256_of(&bytes), media_type: media_type.to_owned(), bytes: Bytes::from(bytes) }
    }

    fn machine(features: &[&str]) -> MachineType {
        MachineType::new("m", features.iter().map(|f| f.to_string()).collect(), MatchMode::Best).unwrap()
    }

    fn image() -> ImageRef {
        "org/app".parse().unwrap()
    }

    fn digest_of(name: &str) -> String {
        Digest::sha256_of(name.as_bytes()).to_string()
    }

    /// An index of a skylake build and an attestation of it.
    fn skylake_only() -> Manifest {
        manifest(
            OCI_INDEX,
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": digest_of("skylake"), "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64", "features": ["cpu:skylake"]}},
                {"mediaType": OCI_MANIFEST, "digest": digest_of("attestation"), "size": 1,
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                 "vnd.docker.reference.digest": digest_of("skylake")}},
            ]}),
        )
    }

    fn explain(manifest: &Manifest, machine: &MachineType) -> Explanation {
        Explanation::new(&image(), manifest, machine, &GpuRequirements::new()).unwrap()
    }

    /// The wire shape, keys in order: the JSON text is compared, not only the values.
    fn assert_json(got: &Value, want: Value) {
        assert_eq!(got.to_string(), want.to_string());
    }

    #[test]
    fn a_single_manifest_passes_through() {
        let single = manifest(OCI_MANIFEST, json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}));
        let sky = machine(&["cpu:skylake"]);
        let explained = explain(&single, &sky);
        assert_eq!(explained.outcome, Outcome::Passthrough);
        assert_eq!(explained.served().count(), 0);
        assert_json(
            &explained.to_json(),
            json!({
                "image": "org/app:latest",
                "digest": single.digest.to_string(),
                "mediaType": OCI_MANIFEST,
                "machineType": sky.to_json(),
                "index": false,
                "passthrough": true,
                "reason": PASSTHROUGH,
            }),
        );
    }

    #[test]
    fn an_index_names_every_verdict_and_the_filtered_digest() {
        let index = skylake_only();
        let cascadelake = machine(&["cpu:cascadelake"]);
        let explained = explain(&index, &cascadelake);
        let served: Vec<&str> = explained.served().map(|v| v.entry.digest.as_str()).collect();
        assert_eq!(served, [digest_of("skylake"), digest_of("attestation")]);
        // the digest a pull is served, from the same function the registry filters with
        let pulled = filter::filter_index(&index, &cascadelake).unwrap();
        let Outcome::Index { verdicts, pull } = &explained.outcome else { panic!("an index") };
        assert_eq!(pull.as_ref().ok(), Some(&pulled.digest));
        assert_json(
            &explained.to_json(),
            json!({
                "image": "org/app:latest",
                "digest": index.digest.to_string(),
                "mediaType": OCI_INDEX,
                "machineType": cascadelake.to_json(),
                "index": true,
                "entries": verdicts.iter().map(Verdict::to_json).collect::<Vec<_>>(),
                "served": [digest_of("skylake"), digest_of("attestation")],
                "filteredDigest": pulled.digest.to_string(),
                "error": null,
            }),
        );
        let entries = explained.to_json()["entries"].clone();
        assert_eq!(entries[0]["served"], true);
        assert_eq!(entries[0]["platform"], "linux/amd64");
        assert_eq!(entries[1]["reason"], "attestation of a served entry");
    }

    #[test]
    fn an_index_where_nothing_fits_names_the_error_a_pull_answers() {
        let index = skylake_only();
        let broadwell = machine(&["cpu:broadwell"]);
        let explained = explain(&index, &broadwell);
        assert_eq!(explained.served().count(), 0);
        let refused = filter::filter_index(&index, &broadwell).unwrap_err();
        let json = explained.to_json();
        assert_eq!(json["filteredDigest"], Value::Null);
        assert_eq!(json["served"], json!([]));
        assert_json(&json["error"], json!({"code": "MANIFEST_UNKNOWN", "message": refused.message}));
        assert!(refused.message.contains("no image of this index fits machine type"), "{}", refused.message);
        let entries = json["entries"].as_array().unwrap();
        assert!(entries.iter().all(|e| e["served"] == false));
        assert!(entries[0]["reason"].as_str().unwrap().contains("cpu:broadwell does not descend from it"));
    }

    #[test]
    fn an_index_that_does_not_parse_is_the_upstream_s_error() {
        let garbage = Manifest {
            digest: Digest::sha256_of(b"{"),
            media_type: OCI_INDEX.to_owned(),
            bytes: Bytes::from_static(b"{"),
        };
        assert!(Explanation::new(&image(), &garbage, &machine(&[]), &GpuRequirements::new()).is_err());
    }
}
