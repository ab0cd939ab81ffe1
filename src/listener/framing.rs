//! HTTP/1.1 request framing, followed byte by byte: where each request head
//! and body ends, and whether a head frames its body two ways.
