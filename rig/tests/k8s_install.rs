//! readygate installed as a user installs it: `manifests/base` applied whole, its Deployment
//! included; the rig's node agent runs its pods as the readygate binary in containers.

mod common;

use rig::stage::Deployed;

#[test]
fn smoke() {
    rig::cluster::test(|_| async {
        common::crypto();
        let _serial = rig::serial::exclusive().await;
        let bin = rig::readygate::find_binary(None).expect("readygate binary");
        let stage = match Deployed::start(&bin, &common::manifests_dir(), &[]).await {
            Ok(s) => s,
            Err(e) => panic!("{e:#}"),
        };
        for p in stage.pods().await.unwrap() {
            println!("{}", serde_json::to_string_pretty(&p["status"]).unwrap());
        }
        println!("{}", stage.log_tail(10));
        stage.stop().await.unwrap();
    })
}
