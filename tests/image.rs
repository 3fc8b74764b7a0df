//! `hack/image/build`, the image without a container engine: the archive it writes from the
//! debug binary is an OCI image layout whose index, manifest, config and layer agree with
//! each other, with the Dockerfile (read here independently of the script) and with the
//! binary and libraries it was built from; and it is the same archive every time.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BINARY: &str = env!("CARGO_BIN_EXE_wsgate");

/// One archive for the tests that only read it: building one takes seconds (gzip of the
/// debug binary).
fn built() -> &'static Image {
    static IMAGE: OnceLock<(tempfile::TempDir, Image)> = OnceLock::new();
    &IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let image = build(&dir.path().join("wsgate.tar"), &["--binary", BINARY]);
            (dir, image)
        })
        .1
}

fn run_build(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(format!("{ROOT}/hack/image/build"))
        .args(args)
        .output()
        .expect("run hack/image/build")
}

fn build(out: &Path, args: &[&str]) -> Image {
    let mut all = args.to_vec();
    all.extend(["--out", out.to_str().expect("UTF-8 path")]);
    let output = run_build(&all);
    assert!(
        output.status.success(),
        "hack/image/build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Image::read(&std::fs::read(out).expect("read the archive"))
}

/// An image archive, checked as an OCI image layout while it is read.
struct Image {
    files: BTreeMap<String, Vec<u8>>,
    index: Value,
    manifest_digest: String,
    config: Value,
    layer: BTreeMap<String, Entry>,
}

impl Image {
    fn read(archive: &[u8]) -> Image {
        let files: BTreeMap<String, Vec<u8>> = untar(archive)
            .into_iter()
            .filter(|(_, e)| e.kind == b'0')
            .map(|(path, e)| (path, e.data))
            .collect();
        let layout: Value = json(&files["oci-layout"]);
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let index: Value = json(&files["index.json"]);
        assert_eq!(index["schemaVersion"], 2);
        let manifests = index["manifests"].as_array().expect("index.manifests");
        assert_eq!(manifests.len(), 1, "one image in {index}");
        let manifest = json(blob(&files, &manifests[0], "manifest.v1+json"));
        let config = json(blob(&files, &manifest["config"], "config.v1+json"));
        let layers = manifest["layers"].as_array().expect("manifest.layers");
        assert_eq!(layers.len(), 1, "one layer in {manifest}");
        let layer_tar = gunzip(blob(&files, &layers[0], "layer.v1.tar+gzip"));
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([format!("sha256:{}", sha256(&layer_tar))]),
            "diff_ids name the uncompressed layer"
        );
        Image {
            manifest_digest: manifests[0]["digest"].as_str().expect("digest").to_owned(),
            files,
            index,
            config,
            layer: untar(&layer_tar),
        }
    }

    fn file(&self, path: &str) -> &Entry {
        let entry = self
            .layer
            .get(path.trim_start_matches('/'))
            .unwrap_or_else(|| panic!("no {path} in the layer"));
        assert_eq!(entry.kind, b'0', "{path} is a regular file");
        entry
    }
}

/// The blob a descriptor names, after checking its media type, size and digest.
fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, descriptor: &Value, kind: &str) -> &'a [u8] {
    let media_type = descriptor["mediaType"].as_str().unwrap_or_default();
    assert_eq!(media_type, format!("application/vnd.oci.image.{kind}"));
    let digest = descriptor["digest"].as_str().expect("digest");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let data = files
        .get(&format!("blobs/sha256/{hex}"))
        .unwrap_or_else(|| panic!("no blob for {digest}"));
    assert_eq!(descriptor["size"], data.len(), "size of {digest}");
    assert_eq!(sha256(data), hex, "content of {digest}");
    data
}

fn json(data: &[u8]) -> Value {
    serde_json::from_slice(data).expect("JSON")
}

/// What the Dockerfile's last stage says, read the way a person reads it.
struct Dockerfile {
    user: String,
    exposed: Vec<String>,
    entrypoint: Value,
    cmd: Value,
    binary_path: String,
}

fn dockerfile() -> Dockerfile {
    let text = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).expect("read Dockerfile");
    let stage = text
        .rsplit_once("\nFROM ")
        .expect("a FROM line")
        .1
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    let mut said = BTreeMap::new();
    for line in stage.skip(1) {
        let (word, rest) = line.split_once(' ').expect("INSTRUCTION ARGUMENTS");
        said.insert(word.to_owned(), rest.trim().to_owned());
    }
    Dockerfile {
        user: said["USER"].clone(),
        exposed: said["EXPOSE"]
            .split_whitespace()
            .map(|port| format!("{port}/tcp"))
            .collect(),
        entrypoint: serde_json::from_str(&said["ENTRYPOINT"]).expect("ENTRYPOINT in exec form"),
        cmd: serde_json::from_str(&said["CMD"]).expect("CMD in exec form"),
        binary_path: said["COPY"]
            .split_whitespace()
            .last()
            .expect("COPY destination")
            .to_owned(),
    }
}

#[test]
fn archive_is_an_oci_layout_whose_index_manifest_config_and_layer_match_their_digests() {
    let image = built();
    // Image::read checked each descriptor against its blob: manifest, config and layer are
    // all the blobs there are.
    let blobs = image
        .files
        .keys()
        .filter(|p| p.starts_with("blobs/"))
        .count();
    assert_eq!(blobs, 3, "{:?}", image.files.keys());
    assert_eq!(image.config["os"], "linux");
    let platform = &image.index["manifests"][0]["platform"];
    assert_eq!(platform["architecture"], image.config["architecture"]);
}

#[test]
fn config_runs_what_the_dockerfile_says() {
    let said = dockerfile();
    let config = &built().config["config"];
    assert_eq!(config["User"], said.user.as_str());
    assert_eq!(config["Entrypoint"], said.entrypoint);
    assert_eq!(config["Cmd"], said.cmd);
    let mut exposed: Vec<&str> = config["ExposedPorts"]
        .as_object()
        .expect("ExposedPorts")
        .keys()
        .map(String::as_str)
        .collect();
    exposed.sort_unstable();
    let mut said_exposed: Vec<&str> = said.exposed.iter().map(String::as_str).collect();
    said_exposed.sort_unstable();
    assert_eq!(exposed, said_exposed);
    assert_eq!(config["WorkingDir"], "/home/nonroot");
}

#[test]
fn index_names_the_image_as_the_kubelet_asks_for_the_charts_default() {
    let chart =
        std::fs::read_to_string(format!("{ROOT}/charts/wsgate/Chart.yaml")).expect("Chart.yaml");
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .expect("appVersion")
        .trim()
        .trim_matches('"');
    let annotations = &built().index["manifests"][0]["annotations"];
    // `image: wsgate:0.1.0` in a pod is looked up by containerd's CRI under Docker's
    // normalised name, the name `ctr images import` takes from this annotation.
    assert_eq!(
        annotations["io.containerd.image.name"],
        format!("docker.io/library/wsgate:{app_version}")
    );
    assert_eq!(
        annotations["org.opencontainers.image.ref.name"],
        app_version
    );
}

#[test]
fn layer_holds_the_binary_byte_for_byte_at_the_dockerfiles_path() {
    let binary = built().file(&dockerfile().binary_path);
    assert_eq!(binary.mode, 0o755);
    assert!(
        binary.data == std::fs::read(BINARY).expect("read the binary"),
        "the binary in the layer differs from {BINARY}"
    );
}

#[test]
fn layer_holds_every_library_ldd_lists_with_the_hosts_bytes() {
    let out = Command::new("ldd").arg(BINARY).output().expect("run ldd");
    let listed: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    assert!(
        listed.iter().any(|p| p.ends_with("libc.so.6")),
        "ldd lists libc: {listed:?}"
    );
    for path in listed {
        let library = built().file(path.to_str().expect("UTF-8 path"));
        assert!(
            library.data == std::fs::read(&path).expect("read library"),
            "{} in the layer differs from the host's",
            path.display()
        );
    }
}

#[test]
fn layer_has_ca_roots_the_nonroot_user_its_home_and_tmp() {
    let image = built();
    let roots = image.file("/etc/ssl/certs/ca-certificates.crt");
    assert!(
        String::from_utf8_lossy(&roots.data).contains("-----BEGIN CERTIFICATE-----"),
        "CA roots are PEM certificates"
    );
    let passwd = String::from_utf8_lossy(&image.file("/etc/passwd").data).into_owned();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    let group = String::from_utf8_lossy(&image.file("/etc/group").data).into_owned();
    assert!(
        group.lines().any(|l| l.starts_with("nonroot:x:65532:")),
        "{group}"
    );
    let home = &image.layer["home/nonroot"];
    assert_eq!((home.kind, home.uid, home.gid), (b'5', 65532, 65532));
    let tmp = &image.layer["tmp"];
    assert_eq!((tmp.kind, tmp.mode), (b'5', 0o1777));
    for (path, entry) in &image.layer {
        assert_eq!(entry.mtime, 0, "{path} has a fixed mtime");
    }
}

#[test]
fn building_twice_gives_the_same_manifest_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let again = build(&dir.path().join("again.tar"), &["--binary", BINARY]);
    assert_eq!(again.manifest_digest, built().manifest_digest);
}

#[test]
fn a_static_image_holds_only_its_binary_named_for_it_and_runs_it_as_uid_65535() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("pause.c");
    std::fs::write(
        &source,
        "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n",
    )
    .expect("write pause.c");
    let pause = dir.path().join("pause");
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&pause)
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc -static");
    let image = build(
        &dir.path().join("pause.tar"),
        &[
            "--static",
            pause.to_str().expect("UTF-8 path"),
            "--tag",
            "wsgate-test/pause:1",
        ],
    );
    assert_eq!(image.config["config"]["User"], "65535:65535");
    assert_eq!(
        image.config["config"]["Entrypoint"],
        serde_json::json!(["/pause"])
    );
    assert_eq!(
        image.index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "docker.io/wsgate-test/pause:1"
    );
    let files: Vec<&str> = image.layer.keys().map(String::as_str).collect();
    assert_eq!(files, ["pause"]);
    assert!(image.file("/pause").data == std::fs::read(&pause).expect("read pause"));

    let refused = run_build(&["--static", BINARY, "--out", "/dev/null"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("dynamically linked") && err.contains("-static"),
        "{err}"
    );
}

#[test]
fn build_stops_with_a_clear_message_when_the_dockerfile_changes_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path();
    std::fs::create_dir_all(copy.join("hack/image")).expect("mkdir");
    std::fs::create_dir_all(copy.join("charts/wsgate")).expect("mkdir");
    std::fs::copy(
        format!("{ROOT}/hack/image/build"),
        copy.join("hack/image/build"),
    )
    .expect("copy");
    std::fs::copy(
        format!("{ROOT}/charts/wsgate/Chart.yaml"),
        copy.join("charts/wsgate/Chart.yaml"),
    )
    .expect("copy");
    let original = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).expect("Dockerfile");
    for (change, complaint) in [
        (
            original.replace("CMD [\"controller\"]", "CMD controller"),
            "exec form",
        ),
        (
            original.replace("USER 65532:65532", "USER nonroot"),
            "numeric UID:GID",
        ),
        (
            original.clone() + "ENV RUST_LOG=info\n",
            "teach it that instruction",
        ),
        (
            original.replace("distroless/cc-debian12", "distroless/static-debian12"),
            "change hack/image/build to match the new base",
        ),
    ] {
        std::fs::write(copy.join("Dockerfile"), &change).expect("write Dockerfile");
        let out = Command::new("bash")
            .arg(copy.join("hack/image/build"))
            .args(["--binary", BINARY, "--out"])
            .arg(copy.join("out.tar"))
            .output()
            .expect("run the copied build");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(complaint),
            "{complaint}: {err}"
        );
    }
}

#[test]
fn build_says_how_to_get_the_release_binary_when_it_is_missing() {
    let out = run_build(&["--binary", "/nonexistent/wsgate", "--out", "/dev/null"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo build --release"), "{err}");
}

/// One member of a tar archive.
struct Entry {
    kind: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    data: Vec<u8>,
}

/// The members of a ustar or pax archive by path (directories without their trailing `/`).
fn untar(tar: &[u8]) -> BTreeMap<String, Entry> {
    let mut entries = BTreeMap::new();
    let mut pax_path = None;
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at..at + 512].iter().any(|&b| b != 0) {
        let header = &tar[at..at + 512];
        let text = |range: std::ops::Range<usize>| {
            let field = &header[range];
            let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
            String::from_utf8_lossy(&field[..end]).into_owned()
        };
        let octal = |range: std::ops::Range<usize>| {
            u64::from_str_radix(text(range).trim(), 8).expect("octal header field")
        };
        assert_eq!(&header[257..262], b"ustar", "a ustar header at {at}");
        let size = usize::try_from(octal(124..136)).expect("size");
        let data = tar[at + 512..at + 512 + size].to_vec();
        at += 512 + size.div_ceil(512) * 512;
        let kind = header[156];
        if kind == b'x' {
            pax_path = String::from_utf8_lossy(&data)
                .lines()
                .find_map(|record| record.split_once(" path=").map(|(_, p)| p.to_owned()));
            continue;
        }
        let prefix = text(345..500);
        let name = text(0..100);
        let path = pax_path.take().unwrap_or(if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        });
        let entry = Entry {
            kind,
            mode: u32::try_from(octal(100..108)).expect("mode"),
            uid: u32::try_from(octal(108..116)).expect("uid"),
            gid: u32::try_from(octal(116..124)).expect("gid"),
            mtime: octal(136..148),
            data,
        };
        entries.insert(path.trim_end_matches('/').to_owned(), entry);
    }
    entries
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    pipe("gzip", &["-dc"], data)
}

fn sha256(data: &[u8]) -> String {
    let out = pipe("sha256sum", &[], data);
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_owned()
}

/// `program args` with `input` on its stdin; its stdout.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    assert!(out.status.success(), "{program} failed");
    out.stdout
}
