//! `okvm features`: what this runtime supports, as the OCI features document.

use super::OCI_VERSION;

/// The features document okvm prints.
pub fn document() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec", "relatime"],
        "linux": {
            "namespaces": ["pid", "ipc", "uts", "mount", "network", "user", "cgroup"],
            "capabilities": [],
        },
        "annotations": {
            "io.okvm.runtime": "okvm",
            "io.okvm.isolation": "microvm",
        },
    })
}

pub fn run() -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&document())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_parses_as_oci_features() {
        let f: oci_spec::runtime::Features = serde_json::from_value(super::document()).unwrap();
        assert_eq!(f.oci_version_min(), "1.0.0");
    }
}
