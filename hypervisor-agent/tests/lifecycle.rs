//! Instance lifecycle on the real libvirt library with the test driver (a private
//! driver state per test: `test:///<tempdir>/node.xml`), with real qemu-img and
//! genisoimage files.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use sf_agent::domain_xml::{DomainType, NicInput, RenderSettings, interface_macs};
use sf_agent::hypervisor::{DomainState, Hypervisor, domain_name};
use sf_agent::instance::{
    InstanceContext, Lifecycle, LifecycleError, LifecycleSettings, NicContext,
};
use sf_agent::libvirt::LibvirtHypervisor;
use sf_schema::instance::{DesiredPowerState, InstanceSpec};
use sf_schema::interface::NicModel;

const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

fn test_uri(dir: &Path) -> String {
    let node = dir.join("node.xml");
    std::fs::write(&node, "<node/>\n").expect("write node.xml");
    format!("test://{}", node.display())
}

fn settings(storage: &Path) -> LifecycleSettings {
    let mut s = LifecycleSettings::new(storage.to_owned(), RenderSettings::new(DomainType::Test));
    s.power_on_delay = Duration::from_millis(10);
    s.state_change_delay = Duration::from_millis(10);
    s
}

fn context() -> InstanceContext {
    let spec: InstanceSpec = serde_json::from_value(serde_json::json!({
        "cpus": 1,
        "memory": 256,
        "disks": [{"size": 1}],
        "sshKey": "ssh-ed25519 AAAAC3 test",
        "userData": "I2Nsb3VkLWNvbmZpZwo=",
    }))
    .expect("spec");
    InstanceContext {
        uid: UID.into(),
        namespace: "demo".into(),
        name: "web-1".into(),
        spec,
        nics: vec![NicContext {
            interface: "web-1-0".into(),
            network: "web".into(),
            network_uid: "net-uid".into(),
            netblock: "10.0.0.0/24".into(),
            vxid: 0x42,
            mac: "02:00:00:00:00:01".into(),
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 7)),
            model: NicModel::Virtio,
            mtu: 7950,
            floating_address: None,
        }],
        base_images: vec![None],
        nvram_template: None,
        dns_domain: "demo.sf".into(),
    }
}

#[tokio::test]
async fn create_pause_unpause_power_cycle_screenshot_hot_plug_unplug_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = LibvirtHypervisor::connect(test_uri(dir.path()))
        .await
        .expect("connect");
    let life = Lifecycle::new(hv.clone(), settings(dir.path()));
    let ctx = context();
    let name = domain_name(UID);

    // create → running
    let state = life
        .create(&ctx, &DesiredPowerState::On)
        .await
        .expect("create");
    assert_eq!(state, DomainState::Running);
    let paths = life.paths(UID);
    assert!(paths.disk(0).exists(), "disk made");
    let drive = paths.config_drive();
    let first_mtime = std::fs::metadata(&drive)
        .expect("config drive")
        .modified()
        .expect("mtime");
    // A repeated create changes nothing.
    assert_eq!(
        life.create(&ctx, &DesiredPowerState::On)
            .await
            .expect("create again"),
        DomainState::Running
    );

    // pause → paused, unpause → running (and both idempotent)
    assert_eq!(life.pause(UID).await.expect("pause"), DomainState::Paused);
    assert_eq!(
        hv.state(&name).await.expect("state"),
        Some(DomainState::Paused)
    );
    assert_eq!(
        life.pause(UID).await.expect("pause again"),
        DomainState::Paused
    );
    assert_eq!(
        life.unpause(UID).await.expect("unpause"),
        DomainState::Running
    );
    assert_eq!(
        hv.state(&name).await.expect("state"),
        Some(DomainState::Running)
    );

    // reboot of a running instance works; soft and hard
    assert_eq!(
        life.reboot(UID, false).await.expect("reboot"),
        DomainState::Running
    );
    assert_eq!(
        life.reboot(UID, true).await.expect("reset"),
        DomainState::Running
    );

    // power off → off; pause now is an invalid lifecycle after the retries
    assert_eq!(life.power_off(UID).await.expect("off"), DomainState::Off);
    assert_eq!(
        life.power_off(UID).await.expect("off again"),
        DomainState::Off
    );
    let err = life
        .pause(UID)
        .await
        .expect_err("cannot pause an off domain");
    assert!(
        matches!(err, LifecycleError::InvalidLifecycle { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(err.code(), "InvalidLifecycle");
    assert!(!err.retryable());
    let err = life.reboot(UID, false).await.expect_err("reboot while off");
    assert_eq!(err.code(), "InstanceOff");

    // power on → running, with the config drive rebuilt
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut ctx2 = ctx.clone();
    ctx2.spec.ssh_key = Some("ssh-ed25519 AAAAC3 rotated".into());
    assert_eq!(
        life.power_on(&ctx2).await.expect("on"),
        DomainState::Running
    );
    let second_mtime = std::fs::metadata(&drive)
        .expect("config drive")
        .modified()
        .expect("mtime");
    assert!(
        second_mtime > first_mtime,
        "config drive rebuilt on power on"
    );
    let iso = std::fs::read(&drive).expect("read iso");
    assert!(
        iso.windows(b"rotated".len()).any(|w| w == b"rotated"),
        "config drive has the new metadata"
    );

    // screenshot is a PNG
    let (mime, png) = life.screenshot(UID).await.expect("screenshot");
    assert_eq!(mime, "image/png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // hot plug adds an interface visible in the domain XML (once)
    let nic = NicInput {
        mac: "02:00:00:00:00:02".into(),
        vxid: 0x43,
        model: NicModel::E1000,
        mtu: 7950,
    };
    assert!(life.hot_plug(UID, &nic).await.expect("hot plug"));
    assert!(!life.hot_plug(UID, &nic).await.expect("hot plug again"));
    let xml = hv.xml(&name, true).await.expect("xml");
    assert_eq!(
        interface_macs(&xml),
        vec!["02:00:00:00:00:01", "02:00:00:00:00:02"]
    );
    assert!(xml.contains("br-vxlan-000043"), "{xml}");

    // hot unplug removes exactly that NIC (by MAC); again: nothing to do
    assert!(
        life.hot_unplug(UID, "02:00:00:00:00:02")
            .await
            .expect("hot unplug")
    );
    let xml = hv.xml(&name, true).await.expect("xml");
    assert_eq!(interface_macs(&xml), vec!["02:00:00:00:00:01"]);
    assert!(!xml.contains("br-vxlan-000043"), "{xml}");
    assert!(
        !life
            .hot_unplug(UID, "02:00:00:00:00:02")
            .await
            .expect("hot unplug again")
    );
    assert!(
        !life
            .hot_unplug("00000000-0000-0000-0000-00000000dead", "02:00:00:00:00:01")
            .await
            .expect("hot unplug of no domain")
    );
    assert_eq!(
        interface_macs(&hv.xml(&name, true).await.expect("xml")).len(),
        1
    );

    // delete leaves no domain and no files
    life.delete(UID).await.expect("delete");
    assert_eq!(hv.state(&name).await.expect("state"), None);
    assert!(!paths.dir.exists());
    life.delete(UID).await.expect("delete again");
    assert!(hv.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn created_paused_and_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = LibvirtHypervisor::connect(test_uri(dir.path()))
        .await
        .expect("connect");
    let life = Lifecycle::new(hv.clone(), settings(dir.path()));
    let mut ctx = context();
    assert_eq!(
        life.create(&ctx, &DesiredPowerState::Paused)
            .await
            .expect("paused"),
        DomainState::Paused
    );
    ctx.uid = "2b4e28ba-2fa1-11d2-883f-0016d3cca427".into();
    assert_eq!(
        life.create(&ctx, &DesiredPowerState::Off)
            .await
            .expect("off"),
        DomainState::Off
    );
    assert_eq!(hv.list().await.expect("list").len(), 2);
}

/// A disk file gone after the create is never remade (blank or from its base) by a
/// later definition: the power on fails, not retried, and nothing is defined.
#[tokio::test]
async fn a_lost_disk_is_not_remade_blank() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = LibvirtHypervisor::connect(test_uri(dir.path()))
        .await
        .expect("connect");
    let life = Lifecycle::new(hv.clone(), settings(dir.path()));
    let ctx = context();
    life.create(&ctx, &DesiredPowerState::Off)
        .await
        .expect("created off");
    let disk = life.paths(UID).disk(0);
    assert!(disk.exists());
    // The host loses the disk and the domain (a rebuilt host, a wiped directory).
    std::fs::remove_file(&disk).expect("remove the disk");
    hv.undefine(&domain_name(UID)).await.expect("undefine");
    let err = life.power_on(&ctx).await.expect_err("no disk");
    assert_eq!(
        (err.code(), err.retryable()),
        ("DiskMissing", false),
        "{err}"
    );
    assert!(err.to_string().contains("spec.disks[0]"), "{err}");
    assert!(!disk.exists(), "not remade");
    assert!(hv.list().await.expect("list").is_empty(), "nothing defined");
}

#[tokio::test]
async fn bad_bus_fails_before_touching_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = LibvirtHypervisor::connect(test_uri(dir.path()))
        .await
        .expect("connect");
    let life = Lifecycle::new(hv.clone(), settings(dir.path()));
    let mut ctx = context();
    ctx.spec.disks[0].bus = sf_schema::instance::DiskBus::parse("ide");
    let err = life
        .create(&ctx, &DesiredPowerState::On)
        .await
        .expect_err("ide");
    assert_eq!(err.code(), "InvalidSpec");
    assert!(err.to_string().contains("spec.disks[0].bus"), "{err}");
    assert!(!life.paths(UID).dir.exists());
    assert!(hv.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn the_default_test_uri_and_a_reconnect_forget_domains() {
    // test:///default is shared by the whole process while any connection is open, so
    // this test only defines and removes its own domain there.
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = LibvirtHypervisor::connect("test:///default")
        .await
        .expect("connect");
    let life = Lifecycle::new(hv.clone(), settings(dir.path()));
    let mut ctx = context();
    ctx.uid = "3b4e28ba-2fa1-11d2-883f-0016d3cca427".into();
    life.create(&ctx, &DesiredPowerState::On)
        .await
        .expect("create");
    let names: Vec<String> = hv
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(names.contains(&domain_name(&ctx.uid)), "{names:?}");
    assert!(
        names.contains(&"test".to_string()),
        "the driver's own domain: {names:?}"
    );
    life.delete(&ctx.uid).await.expect("delete");

    // A private driver file: a new connection starts from the file again.
    let uri = test_uri(dir.path());
    let first = LibvirtHypervisor::connect(uri.clone())
        .await
        .expect("connect");
    let l1 = Lifecycle::new(first.clone(), settings(dir.path()));
    l1.create(&context(), &DesiredPowerState::On)
        .await
        .expect("create");
    assert_eq!(first.list().await.expect("list").len(), 1);
    drop(l1);
    drop(first);
    let second = LibvirtHypervisor::connect(uri).await.expect("reconnect");
    assert!(second.list().await.expect("list").is_empty());
}
