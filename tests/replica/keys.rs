//! `mindoo-replica keys …` as a user runs it: a private key file, nothing
//! secret printed unless asked, a rotation, and keys handed to another
//! device through a passphrase-sealed file.

use std::path::Path;
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_mindoo-replica");

fn keys(home: &Path, args: &[&str], passphrase: Option<&str>) -> Output {
    let mut cmd = Command::new(EXE);
    cmd.arg("keys")
        .args(args)
        .args(["--namespace", "acme/notes"])
        .env("MINDOO_CLIENT_HOME", home)
        .env_remove("MINDOO_PASSPHRASE");
    if let Some(p) = passphrase {
        cmd.env("MINDOO_PASSPHRASE", p);
    }
    cmd.output().expect("the command runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn keys_are_made_kept_private_rotated_and_handed_to_another_device() {
    let dir = tempfile::tempdir().unwrap();
    let (laptop, phone) = (dir.path().join("laptop"), dir.path().join("phone"));
    let file = laptop.join("keys/acme/notes.toml");

    let out = keys(&laptop, &["show"], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("keys init"), "{}", text(&out));

    let out = keys(&laptop, &["init"], None);
    assert!(out.status.success(), "{}", text(&out));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let secret_line = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("secret"))
        .map(|l| l.split('"').nth(1).unwrap().to_owned())
        .unwrap();
    assert!(!text(&out).contains(&secret_line), "init printed a secret");
    let again = keys(&laptop, &["init"], None);
    assert!(!again.status.success(), "keys are never overwritten");

    let shown = keys(&laptop, &["show"], None);
    assert!(shown.status.success());
    assert!(
        !text(&shown).contains(&secret_line),
        "show printed a secret"
    );
    let asked = keys(&laptop, &["show", "--secrets"], None);
    assert!(text(&asked).contains(&secret_line));

    let out = keys(&laptop, &["rotate"], None);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&keys(&laptop, &["show"], None));
    assert_eq!(shown.matches("database key").count(), 2, "{shown}");

    let sealed = dir.path().join("notes.keys");
    let sealed_arg = sealed.to_str().unwrap();
    let out = keys(&laptop, &["export", "--out", sealed_arg], Some("tr0ub4dor"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !std::fs::read(&sealed)
            .unwrap()
            .windows(secret_line.len())
            .any(|w| w == secret_line.as_bytes()),
        "the export is sealed"
    );
    let wrong = keys(&phone, &["import", sealed_arg], Some("tr0ub4dour"));
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("wrong passphrase"),
        "{}",
        text(&wrong)
    );
    let out = keys(&phone, &["import", sealed_arg], Some("tr0ub4dor"));
    assert!(out.status.success(), "{}", text(&out));
    let on_phone = text(&keys(&phone, &["show", "--secrets"], None));
    assert!(
        on_phone.contains(&secret_line),
        "the phone holds the first key"
    );
    let laptop_author = shown.lines().next().unwrap().to_owned();
    assert!(
        !on_phone.contains(&laptop_author),
        "another person's device keeps its own author key"
    );

    // Readable by others: refused with what to do.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let out = keys(&laptop, &["show"], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
}
