//! The documentation says what the code does: the configuration reference in
//! docs/configuration.md and the file model (src/config/file.rs) cannot drift apart.

mod common;

use common::repo_root;
use std::collections::BTreeSet;

/// The YAML block of docs/configuration.md's "Configuration reference" chapter.
fn reference_block() -> String {
    let doc = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let chapter = doc
        .split_once("## Configuration reference")
        .expect("docs/configuration.md has a Configuration reference chapter")
        .1;
    let block = chapter.split_once("```yaml\n").expect("a yaml block").1;
    block
        .split_once("```")
        .expect("the block ends")
        .0
        .to_string()
}

fn keys(value: &serde_yaml::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                if let Some(k) = k.as_str() {
                    out.insert(k.to_string());
                }
                keys(v, out);
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

/// Every field of every struct in the file model, by the name a user writes.
fn model_fields() -> BTreeSet<String> {
    let source = std::fs::read_to_string(repo_root().join("src/config/file.rs")).unwrap();
    let mut fields = BTreeSet::new();
    let mut rename: Option<String> = None;
    for line in source.lines().map(str::trim) {
        if let Some(r) = line.strip_prefix("#[serde(rename = \"") {
            rename = r.split('"').next().map(str::to_string);
            continue;
        }
        let field = line
            .strip_prefix("pub ")
            .and_then(|rest| rest.split_once(':'))
            .map(|(name, _)| name)
            .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        if let Some(name) = field {
            fields.insert(rename.take().unwrap_or_else(|| name.to_string()));
        } else if !line.starts_with("#[") && !line.starts_with("///") {
            rename = None;
        }
    }
    fields
}

#[test]
fn the_configuration_reference_lists_every_key_of_the_file_model_and_no_other() {
    let block = reference_block();
    // Every key the reference writes is one the parser knows: the real parser reports unknown
    // keys and wrong types by path (the block shows alternatives side by side, e.g. url and
    // nodes, which are other errors: those are fine here).
    let problems = match sluice::config::parse("reference", &block, &|_| None) {
        Ok(_) => Vec::new(),
        Err(e) => e.lines,
    };
    for line in &problems {
        assert!(
            !line.contains("unknown field") && !line.contains("invalid type"),
            "the reference block writes what the model does not take: {line}"
        );
    }
    // Every key the model takes is in the reference: as a key, or named in a comment as `key`.
    let value: serde_yaml::Value = serde_yaml::from_str(&block).unwrap();
    let mut documented = BTreeSet::new();
    keys(&value, &mut documented);
    for part in block.split('`').skip(1).step_by(2) {
        documented.insert(part.trim_end_matches(':').to_string());
    }
    let fields = model_fields();
    assert!(fields.len() > 40, "the file model was read: {fields:?}");
    let missing: Vec<&String> = fields.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys of the file model missing from docs/configuration.md's reference: {missing:?}"
    );
}
