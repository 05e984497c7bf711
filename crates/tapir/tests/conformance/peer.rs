//! The peer core: session glue, authorisation of a VM's routes, graceful
//! restart as a helper, export to an upstream neighbor, limits and BFD.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bgp::notification::{cease, code, Notification};
use bgp::session::State;
use bgp::AfiSafi;
use tapir::northbound::config::MaxPrefixAction;
use tapir::peer::Input;
use tapir::routing::rib::RibMsg;

use crate::harness::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// vm11's session, Established.
fn vm_up(policy: tapir::routing::authorisation::VmPolicy, remote: Remote) -> Harness {
    let mut h = Harness::new(vm_config(policy), remote);
    h.start();
    h.tcp_connects();
    assert_eq!(h.remote_state(), State::Established, "{}", h.text());
    h
}

fn vm11() -> Harness {
    vm_up(vm_policy(100, MaxPrefixAction::Reject), Remote::vm())
}

/// The top-of-rack's session, Established.
fn tor_up() -> Harness {
    let mut h = Harness::new(tor_config(), Remote::tor());
    h.start();
    h.tcp_connects();
    assert_eq!(h.remote_state(), State::Established, "{}", h.text());
    h
}

fn vm_attrs() -> bgp::PathAttributes {
    attrs(&[VM_AS])
}

fn has_rib(h: &Harness, f: impl Fn(&RibMsg) -> bool) -> bool {
    h.rib.iter().any(f)
}

/// An UPDATE body (after the header) announcing 10.3.0.9/32 from
/// `attrs_bytes`.
fn raw_update(attrs_bytes: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs_bytes.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs_bytes);
    body.extend_from_slice(nlri);
    bgp::message::frame(2, &body)
}

const AS_PATH_VM: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfc, 0x65];
const NEXT_HOP_VM: [u8; 7] = [0x40, 3, 4, 10, 192, 24, 11];
const NLRI_9: [u8; 5] = [32, 10, 3, 0, 9];

// ---- session glue ----

#[test]
fn a_vm_session_comes_up_and_gets_end_of_rib_alone() {
    let h = vm11();
    // A VM gets no table: End-of-RIB only, and its routes are asked for.
    assert!(h.table.is_empty());
    assert!(
        h.text().contains("UPDATE End-of-RIB ipv4-unicast"),
        "{}",
        h.text()
    );
    insta::assert_snapshot!(h.text());
}

/// A VM silent after Established is woken once, by our End-of-RIB again,
/// never by a ROUTE-REFRESH (FRR 8.4 stops withdrawing what it announced
/// on a session that got one before its first UPDATE).
#[test]
fn a_silent_vm_is_woken_once_by_end_of_rib() {
    let mut h = vm11();
    h.advance(Duration::from_millis(50));
    let eors = h.text().matches("UPDATE End-of-RIB ipv4-unicast").count();
    assert_eq!(eors, 2, "{}", h.text());
    assert!(!h.text().contains("ROUTE-REFRESH"), "{}", h.text());
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_vm_that_announces_at_once_is_not_nudged() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    h.advance(Duration::from_millis(50));
    let eors = h.text().matches("UPDATE End-of-RIB ipv4-unicast").count();
    assert_eq!(eors, 1, "{}", h.text());
    assert!(!h.text().contains("ROUTE-REFRESH"), "{}", h.text());
}

#[test]
fn an_upstream_session_gets_the_table_then_end_of_rib() {
    let mut h = tor_up();
    assert!(has_rib(&h, |m| matches!(m, RibMsg::Refeed { .. })));
    let conn = h.conn.unwrap();
    let a = Arc::new(attrs(&[LOCAL_AS, VM_AS]));
    h.input(
        "the Loc-RIB hands over the table",
        Input::Refeed {
            conn,
            family: AfiSafi::IPV4_UNICAST,
            routes: vec![
                (prefix("10.3.0.1/32"), a.clone()),
                (prefix("10.3.0.2/32"), a),
            ],
            end: true,
        },
    );
    assert_eq!(h.table.len(), 2);
    // Next hop self: our end of the connection.
    assert!(
        h.table.values().all(|v| v.starts_with("via 10.0.0.2")),
        "{:?}",
        h.table
    );
    let t = h.text();
    assert!(t.find("announce 10.3.0.1/32 10.3.0.2/32").unwrap() < t.find("End-of-RIB").unwrap());
    insta::assert_snapshot!(t);
}

#[test]
fn a_refused_connection_is_tried_again_after_connect_retry() {
    let mut h = Harness::new(
        vm_config(vm_policy(100, MaxPrefixAction::Reject)),
        Remote::vm(),
    );
    h.start();
    h.tcp_refused();
    h.advance(secs(4));
    assert!(!h.text().contains("connect #2"));
    h.advance(secs(2));
    h.tcp_connects();
    assert_eq!(h.remote_state(), State::Established);
    insta::assert_snapshot!(h.text());
}

#[test]
fn the_peers_connection_wins_over_our_attempt_in_flight() {
    let mut h = Harness::new(
        vm_config(vm_policy(100, MaxPrefixAction::Reject)),
        Remote::vm(),
    );
    h.start();
    h.remote_connects();
    assert_eq!(h.remote_state(), State::Established);
    assert!(h.text().contains("cancel the connection attempt"));
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_second_connection_while_established_is_refused() {
    let mut h = vm11();
    h.transcript.clear();
    h.offer_second_connection();
    assert!(h.text().contains("refuse the connection"), "{}", h.text());
    assert_eq!(h.core.state(), State::Established);
    insta::assert_snapshot!(h.text());
}

#[test]
fn keepalives_hold_the_session_for_an_hour() {
    let mut h = vm11();
    for _ in 0..60 {
        h.advance(secs(60));
    }
    assert_eq!(h.remote_state(), State::Established);
    assert_eq!(h.core.state(), State::Established);
}

#[test]
fn a_peer_gone_silent_is_dropped_at_the_hold_time() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    h.transcript.clear();
    h.advance_core_only(secs(91));
    assert!(
        h.text().contains("NOTIFICATION Hold Timer Expired (4/0)"),
        "{}",
        h.text()
    );
    assert!(h.rib_routes().is_empty());
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_notification_from_the_peer_withdraws_its_routes() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    assert_eq!(h.rib_routes(), ["10.3.0.1/32 via 10.192.24.11"]);
    h.remote_stops(Notification::new(
        code::CEASE,
        cease::ADMINISTRATIVE_SHUTDOWN,
    ));
    assert!(h.rib_routes().is_empty());
    assert_ne!(h.core.state(), State::Established);
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_bad_message_length_resets_with_the_right_notification() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    h.transcript.clear();
    let mut bad = vec![0xff; 16];
    bad.extend_from_slice(&[0, 18, 4]);
    h.raw("a KEEPALIVE header of length 18", bad);
    assert!(h.text().contains("(1/2)"), "{}", h.text());
    assert!(h.rib_routes().is_empty());
    insta::assert_snapshot!(h.text());
}

#[test]
fn an_update_without_origin_is_treated_as_withdraw_and_the_session_stays() {
    let mut h = vm11();
    h.announce(&["10.3.0.9/32"], VM_ADDR, vm_attrs());
    let mut a = AS_PATH_VM.to_vec();
    a.extend_from_slice(&NEXT_HOP_VM);
    h.raw(
        "an UPDATE for 10.3.0.9/32 without ORIGIN",
        raw_update(&a, &NLRI_9),
    );
    assert!(h.rib_routes().is_empty(), "{}", h.text());
    assert_eq!(h.core.state(), State::Established);
    assert_eq!(h.remote_state(), State::Established);
    insta::assert_snapshot!(h.text());
}

#[test]
fn the_peers_withdrawal_reaches_the_loc_rib() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32", "10.3.0.2/32"], VM_ADDR, vm_attrs());
    h.withdraw(&["10.3.0.1/32"]);
    assert_eq!(h.rib_routes(), ["10.3.0.2/32 via 10.192.24.11"]);
    insta::assert_snapshot!(h.text());
}

// ---- authorisation ----

#[test]
fn a_vms_route_in_its_own_space_is_accepted() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32", "10.3.0.0/24"], VM_ADDR, vm_attrs());
    assert_eq!(
        h.rib_routes(),
        [
            "10.3.0.0/24 via 10.192.24.11",
            "10.3.0.1/32 via 10.192.24.11"
        ]
    );
}

#[test]
fn a_route_outside_the_vms_space_is_refused() {
    let mut h = vm11();
    h.announce(&["192.0.2.0/24", "10.3.1.1/32"], VM_ADDR, vm_attrs());
    assert!(h.rib_routes().is_empty());
    let s = h.core.status(h.now);
    assert_eq!(s.routes_received, 2);
    assert_eq!(s.routes_accepted, 0);
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_route_another_vm_owns_is_refused() {
    let mut h = vm11();
    h.announce(&["10.3.0.77/32", "10.3.0.78/32"], VM_ADDR, vm_attrs());
    assert_eq!(h.rib_routes(), ["10.3.0.78/32 via 10.192.24.11"]);
    let r = h.core.routes();
    let refused = r.iter().find(|e| e.prefix == "10.3.0.77/32").unwrap();
    assert!(!refused.accepted);
    assert!(
        refused.rejected_reason.as_deref().unwrap().contains("vm12"),
        "{refused:?}"
    );
}

#[test]
fn a_next_hop_that_is_not_the_vm_is_refused() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], Ipv4Addr::new(10, 192, 24, 99), vm_attrs());
    assert!(h.rib_routes().is_empty());
    let r = h.core.routes();
    assert!(!r[0].accepted);
}

#[test]
fn a_path_that_does_not_begin_with_the_vms_as_is_refused() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, attrs(&[65000, VM_AS]));
    assert!(h.rib_routes().is_empty());
}

#[test]
fn a_path_with_our_own_as_is_refused() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, attrs(&[VM_AS, LOCAL_AS]));
    assert!(h.rib_routes().is_empty());
}

#[test]
fn a_path_over_the_length_limit_is_refused() {
    let mut h = vm11();
    let long: Vec<u32> = std::iter::repeat_n(VM_AS, 40).collect();
    h.announce(&["10.3.0.1/32"], VM_ADDR, attrs(&long));
    h.announce(&["10.3.0.2/32"], VM_ADDR, attrs(&[VM_AS, VM_AS]));
    assert_eq!(h.rib_routes(), ["10.3.0.2/32 via 10.192.24.11"]);
    assert_eq!(h.core.state(), State::Established);
}

#[test]
fn max_prefixes_refuses_the_excess_and_keeps_the_session() {
    let mut h = vm_up(vm_policy(2, MaxPrefixAction::Reject), Remote::vm());
    h.announce(
        &["10.3.0.1/32", "10.3.0.2/32", "10.3.0.3/32"],
        VM_ADDR,
        vm_attrs(),
    );
    assert_eq!(h.rib_routes().len(), 2, "{}", h.text());
    assert_eq!(h.core.state(), State::Established);
    insta::assert_snapshot!(h.text());
}

#[test]
fn max_prefixes_with_teardown_ends_the_session_with_cease_1() {
    let mut h = vm_up(vm_policy(2, MaxPrefixAction::Teardown), Remote::vm());
    h.announce(
        &["10.3.0.1/32", "10.3.0.2/32", "10.3.0.3/32"],
        VM_ADDR,
        vm_attrs(),
    );
    assert!(h.text().contains("(6/1)"), "{}", h.text());
    assert!(h.rib_routes().is_empty());
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_new_policy_snapshot_judges_every_route_again() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32", "10.3.0.200/32"], VM_ADDR, vm_attrs());
    assert_eq!(h.rib_routes().len(), 2);
    // A registration moves 10.3.0.128/25 to vm12.
    let mut p = vm_policy(100, MaxPrefixAction::Reject);
    p.owners = vec![
        ("10.3.0.0/24{24,32}".parse().unwrap(), "vm11".to_string()),
        ("10.3.0.128/25{25,32}".parse().unwrap(), "vm12".to_string()),
    ]
    .into();
    h.input("vm12 now owns 10.3.0.128/25", Input::Policy(Arc::new(p)));
    assert_eq!(h.rib_routes(), ["10.3.0.1/32 via 10.192.24.11"]);
    // And back: the route comes back without the VM sending it again.
    h.input(
        "the registration is removed",
        Input::Policy(Arc::new(vm_policy(100, MaxPrefixAction::Reject))),
    );
    assert_eq!(h.rib_routes().len(), 2);
    insta::assert_snapshot!(h.text());
}

/// vm11's policy once the inventory names it recdns1001 (same space).
fn recdns1001() -> tapir::routing::authorisation::VmPolicy {
    let mut p = vm_policy(100, MaxPrefixAction::Reject);
    p.entry = Some((
        "recdns1001".into(),
        vec!["10.3.0.0/24{24,32}".parse().unwrap()],
    ));
    p.owners = vec![
        (
            "10.3.0.0/24{24,32}".parse().unwrap(),
            "recdns1001".to_string(),
        ),
        ("10.3.0.77/32".parse().unwrap(), "vm12".to_string()),
    ]
    .into();
    p
}

#[test]
fn a_vm_that_gets_an_inventory_entry_is_renamed_without_a_flap() {
    let p = recdns1001();
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    h.input(
        "the inventory names the VM recdns1001",
        Input::Policy(Arc::new(p)),
    );
    assert_eq!(h.core.cfg().name, "recdns1001");
    // The route is sent again under the new name, never withdrawn.
    assert!(!has_rib(&h, |m| matches!(m, RibMsg::PeerDown(_))));
    assert!(
        h.text().contains("update from recdns1001 (+10.3.0.1/32"),
        "{}",
        h.text()
    );
    assert_eq!(h.rib_routes(), ["10.3.0.1/32 via 10.192.24.11"]);
}

// ---- graceful restart, as a helper ----

fn gr_vm() -> Harness {
    let mut r = Remote::vm();
    r.graceful_restart = Some(60);
    vm_up(vm_policy(100, MaxPrefixAction::Reject), r)
}

#[test]
fn a_restarting_peers_routes_are_kept_as_stale_until_its_end_of_rib() {
    let mut h = gr_vm();
    h.announce(&["10.3.0.1/32", "10.3.0.2/32"], VM_ADDR, vm_attrs());
    h.tcp_lost();
    // Kept: the Loc-RIB is told nothing.
    assert_eq!(h.rib_routes().len(), 2, "{}", h.text());
    h.advance(secs(5));
    // It comes back with its forwarding state kept (the F bit).
    h.remote_cfg.restarting = true;
    h.tcp_connects();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    assert_eq!(h.rib_routes().len(), 2, "{}", h.text());
    h.end_of_rib();
    // What was not announced again is gone.
    assert_eq!(h.rib_routes(), ["10.3.0.1/32 via 10.192.24.11"]);
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_peer_back_without_its_forwarding_state_loses_its_stale_routes_at_once() {
    let mut h = gr_vm();
    h.announce(&["10.3.0.1/32", "10.3.0.2/32"], VM_ADDR, vm_attrs());
    h.tcp_lost();
    assert_eq!(h.rib_routes().len(), 2);
    h.advance(secs(5));
    h.tcp_connects();
    // RFC 4724 §4.2: no Forwarding State bit, no stale routes.
    assert!(h.rib_routes().is_empty(), "{}", h.text());
    insta::assert_snapshot!(h.text());
}

#[test]
fn stale_routes_go_when_the_restart_time_runs_out() {
    let mut h = gr_vm();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    h.tcp_lost();
    h.advance(secs(59));
    assert_eq!(h.rib_routes().len(), 1);
    h.advance(secs(2));
    assert!(h.rib_routes().is_empty(), "{}", h.text());
    insta::assert_snapshot!(h.text());
}

#[test]
fn the_restart_time_is_capped_by_helper_max_time() {
    let mut r = Remote::vm();
    r.graceful_restart = Some(3600);
    let mut h = vm_up(vm_policy(100, MaxPrefixAction::Reject), r);
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    h.tcp_lost();
    h.advance(secs(299));
    assert_eq!(h.rib_routes().len(), 1);
    h.advance(secs(2));
    assert!(h.rib_routes().is_empty());
}

#[test]
fn without_graceful_restart_a_lost_connection_withdraws_everything() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    h.tcp_lost();
    assert!(h.rib_routes().is_empty());
    assert!(has_rib(&h, |m| matches!(m, RibMsg::PeerDown(_))));
}

#[test]
fn a_notification_ends_graceful_restart_help() {
    let mut h = gr_vm();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    h.remote_stops(Notification::new(code::CEASE, cease::ADMINISTRATIVE_RESET));
    assert!(h.rib_routes().is_empty(), "{}", h.text());
}

#[test]
fn after_our_own_restart_an_upstream_session_waits_for_the_loc_rib() {
    let mut h = Harness::with_identity(tor_config(), Remote::tor(), true, true);
    h.start();
    assert!(!h.text().contains("connect #"), "{}", h.text());
    h.input("the Loc-RIB is complete", Input::RibReady);
    h.tcp_connects();
    assert_eq!(h.remote_state(), State::Established);
    insta::assert_snapshot!(h.text());
}

// ---- export ----

#[test]
fn export_changes_reach_the_upstream_neighbor() {
    let mut h = tor_up();
    let a = Arc::new(attrs(&[LOCAL_AS, VM_AS]));
    h.input(
        "the Loc-RIB exports two routes",
        Input::Export(vec![
            (prefix("10.3.0.1/32"), Some(a.clone())),
            (prefix("10.3.0.2/32"), Some(a)),
        ]),
    );
    assert_eq!(h.table.len(), 2);
    // One attribute set: one UPDATE.
    assert_eq!(
        h.text().matches("UPDATE announce").count(),
        1,
        "{}",
        h.text()
    );
    h.input(
        "the Loc-RIB withdraws one",
        Input::Export(vec![(prefix("10.3.0.1/32"), None)]),
    );
    assert_eq!(
        h.table.keys().map(|p| p.to_string()).collect::<Vec<_>>(),
        ["10.3.0.2/32"]
    );
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_route_refresh_from_upstream_asks_the_loc_rib_for_the_table_again() {
    let mut h = tor_up();
    let conn = h.conn.unwrap();
    h.input(
        "the Loc-RIB hands over an empty table",
        Input::Refeed {
            conn,
            family: AfiSafi::IPV4_UNICAST,
            routes: vec![],
            end: true,
        },
    );
    let before = h
        .rib
        .iter()
        .filter(|m| matches!(m, RibMsg::Refeed { .. }))
        .count();
    h.route_refresh();
    let after = h
        .rib
        .iter()
        .filter(|m| matches!(m, RibMsg::Refeed { .. }))
        .count();
    assert_eq!(after, before + 1);
    insta::assert_snapshot!(h.text());
}

#[test]
fn route_refreshes_while_one_is_answered_are_coalesced_into_one_more() {
    let mut h = tor_up();
    let conn = h.conn.unwrap();
    // The first table is still on its way (no Refeed handed over yet).
    h.route_refresh();
    h.route_refresh();
    h.route_refresh();
    let asked = |h: &Harness| {
        h.rib
            .iter()
            .filter(|m| matches!(m, RibMsg::Refeed { .. }))
            .count()
    };
    assert_eq!(asked(&h), 1, "{}", h.text());
    h.input(
        "the Loc-RIB hands over the first table",
        Input::Refeed {
            conn,
            family: AfiSafi::IPV4_UNICAST,
            routes: vec![],
            end: true,
        },
    );
    // Once handed over: exactly one more.
    assert_eq!(asked(&h), 2, "{}", h.text());
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_vms_route_refresh_gets_end_of_rib() {
    let mut h = vm11();
    h.transcript.clear();
    h.route_refresh();
    assert!(h.text().contains("UPDATE End-of-RIB"), "{}", h.text());
    assert!(!has_rib(&h, |m| matches!(m, RibMsg::Refeed { .. })));
}

#[test]
fn a_new_export_policy_goes_to_the_loc_rib_without_a_reset() {
    let mut h = tor_up();
    let mut p = tapir::routing::policy::Policy::hypervisor_default();
    p.name = "STRICTER".into();
    p.terms.clear();
    h.input(
        "a reload sets a new export policy",
        Input::SetExport(Arc::new(p)),
    );
    assert!(has_rib(&h, |m| matches!(m, RibMsg::SetPolicy { .. })));
    assert_eq!(h.remote_state(), State::Established);
}

// ---- limits, BFD, stopping ----

#[test]
fn a_send_queue_over_the_limit_ends_the_session_with_out_of_resources() {
    let mut h = tor_up();
    let conn = h.conn.unwrap();
    h.transcript.clear();
    h.input(
        "the outbox holds 65 MiB",
        Input::SendQueueOver {
            conn,
            queued: 65 << 20,
        },
    );
    assert!(h.text().contains(&format!("close {conn}")), "{}", h.text());
    assert_ne!(h.core.state(), State::Established);
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_send_hold_timer_expiry_ends_the_session() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    let conn = h.conn.unwrap();
    h.input("the writer is stuck", Input::SendHoldExpired { conn });
    assert!(h.rib_routes().is_empty());
    assert_ne!(h.core.state(), State::Established);
}

#[test]
fn bfd_starts_with_the_session_and_ends_with_it() {
    let mut cfg = vm_config(vm_policy(100, MaxPrefixAction::Reject));
    cfg.session.bfd = Some(tapir::southbound::bfd::BfdTimers {
        interval: Duration::from_millis(300),
        multiplier: 3,
    });
    let mut h = Harness::new(cfg, Remote::vm());
    h.start();
    h.tcp_connects();
    assert!(h.text().contains("bfd add 300 ms x 3"), "{}", h.text());
    h.input("BFD says the path is down", Input::BfdDown);
    assert!(h.text().contains("(6/10)"), "{}", h.text());
    assert!(
        h.text().contains("bfd remove 10.192.24.11 Some(11)"),
        "{}",
        h.text()
    );
    insta::assert_snapshot!(h.text());
}

#[test]
fn no_bfd_session_without_a_bfd_task() {
    let mut cfg = vm_config(vm_policy(100, MaxPrefixAction::Reject));
    cfg.session.bfd = Some(tapir::southbound::bfd::BfdTimers {
        interval: Duration::from_millis(300),
        multiplier: 3,
    });
    let mut h = Harness::with_identity(cfg, Remote::vm(), false, false);
    h.start();
    h.tcp_connects();
    assert!(!h.text().contains("bfd add"));
}

#[test]
fn shutdown_sends_cease_and_withdraws_everything() {
    let mut h = tor_up();
    h.input(
        "the daemon stops",
        Input::Shutdown(Notification::new(
            code::CEASE,
            cease::ADMINISTRATIVE_SHUTDOWN,
        )),
    );
    assert!(h.text().contains("(6/2)"), "{}", h.text());
    assert!(has_rib(&h, |m| matches!(m, RibMsg::PeerDown(_))));
    assert!(has_rib(&h, |m| matches!(m, RibMsg::Unsubscribe(_))));
    insta::assert_snapshot!(h.text());
}

#[test]
fn abort_closes_without_a_notification_and_tells_the_loc_rib_nothing() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    h.transcript.clear();
    h.input("tapir restarts gracefully", Input::Abort);
    assert!(!h.text().contains("NOTIFICATION"), "{}", h.text());
    assert_eq!(h.rib_routes().len(), 1);
    insta::assert_snapshot!(h.text());
}

#[test]
fn new_timers_apply_from_the_next_session() {
    let mut h = vm11();
    let mut c = vm_config(vm_policy(100, MaxPrefixAction::Reject));
    c.session.hold_time = 9;
    h.input("a reload sets hold-time 9", Input::NextSession(Box::new(c)));
    assert_eq!(h.core.status(h.now).hold_time, Some(90));
    h.remote_stops(Notification::new(code::CEASE, cease::ADMINISTRATIVE_RESET));
    h.advance(secs(6));
    h.tcp_connects();
    assert_eq!(h.core.status(h.now).hold_time, Some(9), "{}", h.text());
}

#[test]
fn counters_and_the_last_notification_are_kept() {
    let mut h = vm11();
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    h.remote_stops(Notification::new(code::CEASE, cease::ADMINISTRATIVE_RESET));
    let s = h.core.status(h.now);
    assert_eq!(s.messages_received["update"], 1);
    assert_eq!(s.messages_received["notification"], 1);
    assert_eq!(s.flaps, 1);
    assert!(s.last_notification_received.unwrap().contains("(6/4)"));
}

#[test]
fn a_vm_renamed_during_graceful_restart_keeps_its_stale_routes_under_its_new_name() {
    let mut h = gr_vm();
    h.announce(&["10.3.0.1/32", "10.3.0.2/32"], VM_ADDR, vm_attrs());
    h.tcp_lost();
    h.advance(secs(5));
    h.remote_cfg.restarting = true;
    h.tcp_connects();
    // Back, but 10.3.0.2/32 not announced again yet: still stale.
    h.announce(&["10.3.0.1/32"], VM_ADDR, vm_attrs());
    let p = recdns1001();
    h.input(
        "the inventory names the VM recdns1001",
        Input::Policy(Arc::new(p)),
    );
    // Both routes now stand under the new name (a drain by that name
    // reaches them); before, the stale one stayed under the old.
    let renamed = h.rib.iter().rev().find_map(|m| match m {
        RibMsg::Update { peer, announce, .. } if peer.name == "recdns1001" => Some(
            announce
                .iter()
                .map(|(p, _, _)| p.to_string())
                .collect::<Vec<_>>(),
        ),
        _ => None,
    });
    assert_eq!(
        renamed.as_deref(),
        Some(&["10.3.0.1/32".to_string(), "10.3.0.2/32".to_string()][..]),
        "{}",
        h.text()
    );
}

/// A peer whose table stops short of End-of-RIB (BIRD 2.0.12 waits for
/// its next wake-up) gets one KEEPALIVE once it has been silent a while,
/// never within a second of another KEEPALIVE (RFC 4271 §4.4).
fn tor_sending_its_table() -> Harness {
    let mut r = Remote::tor();
    r.graceful_restart = Some(120);
    let mut h = Harness::new(tor_config(), r);
    h.start();
    h.tcp_connects();
    h.announce(&["192.0.2.0/24"], TOR_ADDR, attrs(&[TOR_AS]));
    h.transcript.clear();
    h
}

fn keepalives(h: &Harness) -> usize {
    h.text().matches("KEEPALIVE").count()
}

#[test]
fn a_table_that_stops_short_of_end_of_rib_gets_a_keepalive() {
    let mut h = tor_sending_its_table();
    // Within a second of the KEEPALIVE of the OPEN exchange: it waits.
    h.advance_core_only(Duration::from_millis(500));
    assert_eq!(keepalives(&h), 0, "{}", h.text());
    h.advance_core_only(Duration::from_millis(600));
    assert_eq!(keepalives(&h), 1, "{}", h.text());
    // Still silent: no second one.
    h.advance_core_only(Duration::from_millis(900));
    assert_eq!(keepalives(&h), 1, "{}", h.text());
    insta::assert_snapshot!(h.text());
}

#[test]
fn a_table_that_ends_gets_no_extra_keepalive() {
    let mut h = tor_sending_its_table();
    h.end_of_rib();
    h.advance_core_only(Duration::from_secs(5));
    assert_eq!(keepalives(&h), 0, "{}", h.text());
}

#[test]
fn a_table_still_arriving_gets_no_extra_keepalive() {
    let mut h = tor_sending_its_table();
    for i in 0..30u8 {
        h.advance_core_only(Duration::from_millis(30));
        h.announce(&[&format!("198.51.100.{i}/32")], TOR_ADDR, attrs(&[TOR_AS]));
    }
    assert_eq!(keepalives(&h), 0, "{}", h.text());
}

#[test]
fn a_dual_stack_table_is_done_only_when_both_families_end() {
    let mut r = Remote::tor();
    r.graceful_restart = Some(120);
    r.families = vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST];
    let mut cfg = tor_config();
    cfg.families = vec![bgp::Afi::Ipv4, bgp::Afi::Ipv6];
    let mut h = Harness::new(cfg, r);
    h.start();
    h.tcp_connects();
    h.announce(&["192.0.2.0/24"], TOR_ADDR, attrs(&[TOR_AS]));
    // IPv4's table ends; IPv6's has not.
    h.end_of_rib();
    h.transcript.clear();
    h.advance_core_only(Duration::from_millis(1100));
    assert_eq!(keepalives(&h), 1, "{}", h.text());
}

#[test]
fn a_peer_without_graceful_restart_gets_no_wake_up() {
    // Without the capability it need not send End-of-RIB at all.
    let mut h = Harness::new(tor_config(), Remote::tor());
    h.start();
    h.tcp_connects();
    h.announce(&["192.0.2.0/24"], TOR_ADDR, attrs(&[TOR_AS]));
    h.transcript.clear();
    h.advance_core_only(Duration::from_secs(5));
    assert_eq!(keepalives(&h), 0, "{}", h.text());
}

#[test]
fn the_loc_ribs_ready_signal_refeeds_only_a_peer_that_waited_for_it() {
    let mut h = tor_up();
    let asked = |h: &Harness| {
        h.rib
            .iter()
            .filter(|m| matches!(m, RibMsg::Refeed { .. }))
            .count()
    };
    assert_eq!(asked(&h), 1);
    // The Loc-RIB tells every newcomer it is ready; this one never waited.
    h.input("the Loc-RIB is ready", Input::RibReady);
    assert_eq!(asked(&h), 1, "{}", h.text());
}

/// A live migration's destination: the tap is there before the guest
/// runs. Attempts that nothing answers (no ARP reply) are not backed off;
/// ones the VM's kernel refuses are; and the VM's link-layer address
/// becoming known (its gratuitous ARP at the switchover) starts one at once.
#[test]
fn a_vm_not_running_yet_is_tried_every_few_seconds_and_at_once_when_it_appears() {
    let mut h = Harness::new(
        vm_config(vm_policy(100, MaxPrefixAction::Reject)),
        Remote::vm(),
    );
    let unreachable = std::io::ErrorKind::HostUnreachable;
    let connects = |h: &Harness| h.text().matches("< connect ").count();
    h.start();
    for _ in 0..4 {
        h.tcp_fails(unreachable);
        assert_eq!(h.core.status(h.now).connect_retry_secs, 5, "{}", h.text());
        h.advance(secs(5));
    }
    assert_eq!(connects(&h), 5);
    // The guest runs, without BGP yet: refused, and backed off.
    for wait in [5, 10, 20] {
        h.tcp_refused();
        h.advance(secs(wait));
    }
    h.tcp_refused();
    assert_eq!(h.core.status(h.now).connect_retry_secs, 40);
    assert_eq!(connects(&h), 8);
    // Its MAC: an attempt at once, the back-off over.
    h.advance(secs(1));
    h.input("the VM's MAC is known", Input::Reachable);
    assert_eq!(connects(&h), 9, "{}", h.text());
    assert_eq!(h.core.status(h.now).connect_retry_secs, 5);
    // Again within connect-retry: nothing more.
    h.input("the VM's MAC is known", Input::Reachable);
    assert_eq!(connects(&h), 9);
    // Refused, and another MAC at once (a VM flapping its MAC): no more
    // than one such attempt per connect-retry.
    h.tcp_refused();
    h.input("another MAC", Input::Reachable);
    assert_eq!(connects(&h), 9, "{}", h.text());
    h.advance(secs(5));
    assert_eq!(connects(&h), 10);
    // Later, with an attempt in flight: made anew (its SYN may wait for a
    // retransmission, or have gone nowhere).
    h.input("another MAC", Input::Reachable);
    assert_eq!(connects(&h), 11, "{}", h.text());
    h.tcp_connects();
    assert_eq!(h.remote_state(), State::Established);
    // Established: nothing to do.
    h.advance(secs(6));
    h.input("the VM's MAC is known", Input::Reachable);
    assert_eq!(connects(&h), 11);
    assert_eq!(h.remote_state(), State::Established);
}

/// With a connect-retry shorter than the kernel's ARP give-up (3 s), the
/// first attempts are cut short by the timer and back off; once one lasts
/// long enough to fail "unreachable", the waits stop growing at 4 s, and
/// the wait already running is cut to that too.
#[test]
fn unreachable_attempts_stop_backing_off_at_four_seconds() {
    let mut cfg = vm_config(vm_policy(100, MaxPrefixAction::Reject));
    cfg.session.connect_retry = secs(1);
    let mut h = Harness::new(cfg, Remote::vm());
    let retry = |h: &Harness| h.core.status(h.now).connect_retry_secs;
    h.start();
    // Cut short at 1 s, 2 s: no answer yet.
    h.advance(secs(1));
    h.advance(secs(2));
    assert_eq!(retry(&h), 4);
    // This one (4 s) sees the kernel give up after 3 s.
    h.advance(secs(3));
    h.tcp_fails(std::io::ErrorKind::HostUnreachable);
    assert_eq!(retry(&h), 4);
    let before = h.text().matches("< connect ").count();
    h.advance(secs(1));
    assert_eq!(h.text().matches("< connect ").count(), before + 1);
    // Timed out (the kernel's "unreachable" is rate-limited: most
    // attempts only time out) is the same.
    for kind in [
        std::io::ErrorKind::TimedOut,
        std::io::ErrorKind::NetworkUnreachable,
        std::io::ErrorKind::HostUnreachable,
    ] {
        h.advance(secs(3));
        h.tcp_fails(kind);
        h.advance(secs(1));
        assert_eq!(retry(&h), 4, "{}", h.text());
    }
    // Backed off to 16 s by refusals, then unreachable: the next attempt
    // comes 4 s after the failure, not 16 s after the attempt began.
    for wait in [4, 8] {
        h.tcp_refused();
        h.advance(secs(wait));
    }
    assert_eq!(retry(&h), 16);
    let before = h.text().matches("< connect ").count();
    h.advance(secs(3));
    h.tcp_fails(std::io::ErrorKind::HostUnreachable);
    h.advance(secs(4));
    assert_eq!(
        h.text().matches("< connect ").count(),
        before + 1,
        "{}",
        h.text()
    );
}

#[test]
fn a_vm_address_is_a_probe_until_a_session_and_never_again_after() {
    let mut h = Harness::new(
        vm_config(vm_policy(100, MaxPrefixAction::Reject)),
        Remote::vm(),
    );
    h.start();
    assert!(h.core.probing(), "nothing has answered yet");
    h.tcp_refused();
    // Refused: the next attempt waits 5 s, then 10 s (doubling).
    h.advance(secs(5));
    h.tcp_refused();
    assert!(h.core.probing());
    assert_eq!(h.core.status(h.now).connect_retry_secs, 10);
    h.advance(secs(10));
    h.tcp_connects();
    assert_eq!(h.remote_state(), State::Established);
    assert!(!h.core.probing());
    // The VM's speaker goes away: the session is down, not a probe, and
    // its attempts no longer back off.
    h.tcp_lost();
    for _ in 0..3 {
        h.advance(secs(5));
        h.tcp_refused();
    }
    assert!(!h.core.probing(), "{}", h.text());
    assert_eq!(h.core.status(h.now).connect_retry_secs, 5);
}
