//! tapnet-switch: the datapath (sans-IO).
#![forbid(unsafe_code)]
