//! pmcrash
