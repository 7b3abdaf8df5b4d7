//! `metalcastd`, the provisioning appliance: HTTP (boot scripts, boot files, JSON API),
//! the store, and the wiring of the DHCP, TFTP and router advertisement services.

pub mod auth;
pub mod boot;
pub mod config;
pub mod http;
pub mod images;
pub mod layouts;
pub mod mcast;
pub mod ra;
pub mod script;
pub mod store;
pub mod tftp_root;
pub mod token;
