//! The origin config the Debian package ships (`tuning/package/etc/origin.toml`) holds every key
//! and its commented defaults are the code's (`cue_testkit::shipped_config`).

#[test]
fn the_shipped_origin_config_has_every_key_and_true_defaults() {
    let text = include_str!("../../tuning/package/etc/origin.toml");
    let p = cue_testkit::shipped_config::problems::<cue_origin::config::OriginConfig>(text);
    assert!(p.is_empty(), "{}", p.join("\n"));
}
