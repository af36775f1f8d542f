//! Access log placeholder; see below.
