use super::*;
use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

fn spec(netns: Option<Option<&str>>, annotation: Option<&str>) -> Spec {
    spec_with(netns, annotation.map(|a| (ANNOTATION_NETWORK, a)))
}

fn spec_with(netns: Option<Option<&str>>, annotation: Option<(&str, &str)>) -> Spec {
    let mut namespaces = vec![LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Mount)
        .build()
        .unwrap()];
    if let Some(path) = netns {
        let mut b = LinuxNamespaceBuilder::default();
        b = b.typ(LinuxNamespaceType::Network);
        if let Some(p) = path {
            b = b.path(p);
        }
        namespaces.push(b.build().unwrap());
    }
    let mut s = SpecBuilder::default()
        .linux(
            LinuxBuilder::default()
                .namespaces(namespaces)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    if let Some((k, v)) = annotation {
        s.set_annotations(Some([(k.to_string(), v.to_string())].into()));
    }
    s
}

#[test]
fn the_mode_follows_the_namespace_path_and_the_annotation() {
    assert_eq!(
        Mode::of(&spec(Some(Some("/run/netns/x")), None)).unwrap(),
        Mode::Engine("/run/netns/x".into())
    );
    // `ctr run`: a new, empty namespace; and host networking: no entry.
    assert_eq!(Mode::of(&spec(Some(None), None)).unwrap(), Mode::Bridge);
    assert_eq!(Mode::of(&spec(None, None)).unwrap(), Mode::Bridge);
    assert_eq!(
        Mode::of(&spec(Some(Some("/run/netns/x")), Some("bridge"))).unwrap(),
        Mode::Bridge
    );
    assert_eq!(Mode::of(&spec(None, Some("none"))).unwrap(), Mode::Loopback);
    // podman's --network none is a new namespace; its --network host has none.
    let podman = Some((ANNOTATION_MANAGER, "libpod"));
    assert_eq!(
        Mode::of(&spec_with(Some(None), podman)).unwrap(),
        Mode::Loopback
    );
    assert_eq!(Mode::of(&spec_with(None, podman)).unwrap(), Mode::Bridge);
    let e = Mode::of(&spec(None, Some("host"))).unwrap_err().to_string();
    assert!(e.contains("io.okvm.network=\"host\""), "{e}");
}

#[test]
fn tap_names_fit_the_kernel_and_differ_between_ids() {
    let a = tap_name("a-very-long-container-id-0123456789abcdef0123456789abcdef");
    let b = tap_name("a-very-long-container-id-0123456789abcdef0123456789abcdeg");
    assert_eq!(a.len(), 15);
    assert!(IfName::new(&a).is_ok());
    assert_ne!(a, b);
    assert!(a.starts_with("okt"));
}

#[test]
fn guest_macs_are_unicast_locally_administered_and_stable() {
    let m = guest_mac("c1");
    assert_eq!(m[0] & 0x01, 0, "unicast");
    assert_eq!(m[0] & 0x02, 0x02, "locally administered");
    assert_eq!(m, guest_mac("c1"));
    assert_ne!(m, guest_mac("c2"));
}

#[test]
fn a_record_round_trips_and_a_missing_one_is_nothing_to_undo() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Record::load(dir.path()), None);
    teardown(dir.path());
    let r = Record {
        tap: Some("okt000000000001".into()),
        guard: true,
        ..Record::default()
    };
    r.save(dir.path()).unwrap();
    assert_eq!(Record::load(dir.path()), Some(r));
    // A record from before taps were guarded has nothing to unguard.
    std::fs::write(dir.path().join(RECORD), r#"{"tap":"okt000000000001"}"#).unwrap();
    assert!(!Record::load(dir.path()).unwrap().guard);
}
