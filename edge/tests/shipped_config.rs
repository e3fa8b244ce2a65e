//! The edge config the Debian package ships (`tuning/package/etc/edge.toml`) holds every key
//! and its commented defaults are the code's (`cue_testkit::shipped_config`).

#[test]
fn the_shipped_edge_config_has_every_key_and_true_defaults() {
    let text = include_str!("../../tuning/package/etc/edge.toml");
    let p = cue_testkit::shipped_config::problems::<cue_edge::config::EdgeConfig>(text);
    assert!(p.is_empty(), "{}", p.join("\n"));
}
