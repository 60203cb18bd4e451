//! `slotd demo`, the README's first command, through the real binary: blue serves
//! production, a swap through the CLI puts green there, a rollback brings blue back;
//! every demo starts from blue (a fresh state folder); an admin API without a token
//! is refused off loopback.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{eventually, free_port, run_cli, slotd_bin};

/// A running `slotd demo`, killed when dropped.
struct Demo {
    child: Child,
    proxy: String,
    admin: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    async fn start() -> Demo {
        let (proxy, admin) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let child = Command::new(slotd_bin())
            .args(["demo", "--listen", &proxy, "--admin-listen", &admin])
            .env("SLOTD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn slotd demo");
        let demo = Demo {
            child,
            proxy,
            admin: format!("http://{admin}"),
        };
        let url = format!("{}/healthz", demo.admin);
        eventually(Duration::from_secs(20), "the demo's admin API", || {
            let url = url.clone();
            async move {
                let ok = reqwest::get(url).await.ok()?.status() == 200;
                ok.then_some(())
            }
        })
        .await;
        demo
    }

    /// What production (`localhost`) answers.
    async fn production(&self) -> String {
        reqwest::Client::new()
            .get(format!("http://{}/", self.proxy))
            .header("host", "localhost")
            .send()
            .await
            .expect("the demo proxy answers")
            .text()
            .await
            .unwrap()
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        run_cli(args, Some(&self.admin), None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_blue_swaps_to_green_and_rolls_back() {
    let demo = Demo::start().await;
    let blue = demo.production().await;
    assert!(blue.starts_with("blue v1 from blue-"), "{blue}");
    assert!(blue.contains("X-Slot=production"), "{blue}");

    let (code, out, err) = demo.cli(&["swap", "--app", "shop", "--source", "staging"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("COMPLETED"), "{out}");
    let green = demo.production().await;
    assert!(green.starts_with("green v2 from green-"), "{green}");
    assert!(green.contains("X-Slot=production"), "{green}");

    let (code, out, err) = demo.cli(&["rollback", "--app", "shop"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(demo.production().await.starts_with("blue v1"));
    let (code, out, _) = demo.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("production") && out.contains("staging"),
        "{out}"
    );
    drop(demo);

    // The next demo starts from blue again, whatever the last one did.
    let demo = Demo::start().await;
    let (code, out, err) = demo.cli(&["swap", "--app", "shop", "--source", "staging"]);
    assert_eq!(code, 0, "{out}{err}");
    drop(demo);
    let demo = Demo::start().await;
    assert!(demo.production().await.starts_with("blue v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_admin_api_has_no_token_so_it_stays_on_loopback() {
    let child = Command::new(slotd_bin())
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin-listen",
            &format!("0.0.0.0:{}", free_port()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn slotd demo");
    // Killed if it serves instead of refusing.
    let mut demo = Demo {
        child,
        proxy: String::new(),
        admin: String::new(),
    };
    let status = eventually(Duration::from_secs(20), "slotd demo to refuse", || {
        let status = demo.child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(demo.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("loopback only"), "{err}");
}
