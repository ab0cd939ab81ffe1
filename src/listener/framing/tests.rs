//! The framing follower fed requests of every shape, whole, split at every
//! byte, and byte by byte.

use super::*;

/// Follows `input` in one read, then split in two at every position
/// (and byte by byte), and checks each gives the same heads.
fn heads(input: &[u8]) -> Heads {
    let whole = Framing::new(true).feed(input);
    for at in 0..=input.len() {
        let mut framing = Framing::new(true);
        let (a, b) = (framing.feed(&input[..at]), framing.feed(&input[at..]));
        assert_eq!(add(a, b), whole, "split at {at}");
    }
    let mut framing = Framing::new(true);
    let bytewise = input
        .iter()
        .fold(Heads::default(), |sum, b| add(sum, framing.feed(&[*b])));
    assert_eq!(bytewise, whole, "byte by byte");
    whole
}

fn add(a: Heads, b: Heads) -> Heads {
    assert!(
        !a.refuse_rest || b == Heads::default(),
        "heads after a refusal"
    );
    Heads {
        clean: a.clean + b.clean,
        refuse_rest: a.refuse_rest || b.refuse_rest,
        http2: a.http2 || b.http2,
    }
}

fn clean(n: u64) -> Heads {
    Heads {
        clean: n,
        ..Heads::default()
    }
}

fn refused_after(n: u64) -> Heads {
    Heads {
        clean: n,
        refuse_rest: true,
        http2: false,
    }
}

const GET: &str = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn pipelined_gets_are_each_clean() {
    assert_eq!(heads(GET.repeat(5).as_bytes()), clean(5));
}

#[test]
fn a_body_by_content_length_is_skipped_up_to_the_next_head() {
    // The body looks like a head framed two ways: it is only a body.
    let body = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let post = format!(
        "POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(heads(format!("{post}{GET}").as_bytes()), clean(2));
}

#[test]
fn chunked_bodies_with_extensions_and_trailers_are_followed() {
    let chunked = "POST /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5;name=value;x=\"a b\"\r\nhello\r\nA \t;ext\r\n0123456789\r\n\
                   0;last\r\nChecksum: 1\r\nX-Other: 2\r\n\r\n";
    let input = format!("{chunked}{GET}{chunked}");
    assert_eq!(heads(input.as_bytes()), clean(3));
    let plain = "POST /f HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n\
                 0000A\r\n0123456789\r\n0\r\n\r\n";
    assert_eq!(heads(format!("{plain}{GET}").as_bytes()), clean(2));
}

#[test]
fn heads_end_on_every_terminator_httparse_accepts() {
    for head in [
        "GET / HTTP/1.1\nHost: x\n\n",
        "GET / HTTP/1.1\r\nHost: x\n\r\n",
        "GET / HTTP/1.1\nHost: x\r\n\n",
        "GET / HTTP/1.1\n\n",
        "GET / HTTP/1.1\r\n\r\n",
        // Empty lines before a request line are skipped.
        "\r\n\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        assert_eq!(
            heads(format!("{head}{head}").as_bytes()),
            clean(2),
            "{head:?}"
        );
    }
    let post = "POST / HTTP/1.1\nContent-Length: 3\n\nabcPOST / HTTP/1.1\r\n\
                transfer-encoding:chunked\n\r\n3\r\nabc\r\n0\r\n\r\n\r\n";
    assert_eq!(heads(post.as_bytes()), clean(2));
}

#[test]
fn a_large_body_is_skipped_without_looking_at_it() {
    let body = vec![b'\n'; 1 << 20];
    let mut input = b"POST / HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    input.extend_from_slice(&body);
    input.extend_from_slice(GET.as_bytes());
    let mut framing = Framing::new(true);
    let mut sum = Heads::default();
    for piece in input.chunks(16 << 10) {
        sum = add(sum, framing.feed(piece));
    }
    assert_eq!(sum, clean(2));
    let mut chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n".to_vec();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    chunked.extend_from_slice(GET.as_bytes());
    assert_eq!(Framing::new(true).feed(&chunked), clean(2));
}

#[test]
fn a_head_with_both_framings_is_refused_however_it_arrives() {
    let both =
        "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(heads(both.as_bytes()), refused_after(0));
    assert_eq!(
        heads(format!("{GET}{GET}{both}").as_bytes()),
        refused_after(2)
    );
    let bare = "POST / HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length: 4\n\n";
    assert_eq!(heads(format!("{GET}{bare}").as_bytes()), refused_after(1));
    let cased = "POST / HTTP/1.1\r\ncOnTeNt-LeNgTh:4\r\nTRANSFER-ENCODING:\tchunked \r\n\r\n";
    assert_eq!(heads(cased.as_bytes()), refused_after(0));
    // Behind a body: found only by following it.
    let post = format!("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}{both}");
    assert_eq!(heads(post.as_bytes()), refused_after(1));
}

#[test]
fn framing_headers_read_another_way_elsewhere_are_refused() {
    for fields in [
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked,\r\n",
        "Transfer-Encoding: x;q=1, chunked\r\n",
        "Transfer-Encoding: \"a\", chunked\r\n",
        "Transfer-Encoding:\r\n",
        "Content-Length: 1\r\nContent-Length: 2\r\n",
        "Content-Length: 1, 1\r\n",
        "Content-Length: +1\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 0x10\r\n",
        "Content-Length:\r\n",
        "Content-Length: 1 1\r\n",
        "Content-Length: 99999999999999999999\r\n",
    ] {
        let head = format!("POST / HTTP/1.1\r\n{fields}\r\n");
        assert_eq!(heads(head.as_bytes()), refused_after(0), "{fields:?}");
    }
}

#[test]
fn repeated_equal_lengths_frame_one_body() {
    let head = "POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 02\r\n\r\nab";
    assert_eq!(heads(format!("{head}{GET}").as_bytes()), clean(2));
}

#[test]
fn names_that_only_look_like_framing_headers_frame_nothing() {
    let head = "GET / HTTP/1.1\r\nContent-Length-X: 5\r\nX-Transfer-Encoding: gzip\r\n\
                Transfer-Encodings: chunked\r\nA-very-long-header-name-indeed: 1\r\n\r\n";
    assert_eq!(heads(format!("{head}{GET}").as_bytes()), clean(2));
}

#[test]
fn bytes_hyper_refuses_stop_the_following() {
    for input in [
        // Folded header line.
        "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
        // A CR without its LF.
        "GET / HTTP/1.1\r\n\rX: a\r\n\r\n",
        "\rGET / HTTP/1.1\r\n\r\n",
        // A framing header without a colon (other lines without one
        // are hyper's to refuse).
        "GET / HTTP/1.1\r\nContent-Length\r\n\r\n",
        "GET / HTTP/1.1\r\ntransfer-encoding\nchunked\r\n\r\n",
    ] {
        assert_eq!(heads(input.as_bytes()), refused_after(0), "{input:?}");
    }
    for body in [
        // hyper wants CRLF in chunk lines and after chunk data.
        "3\nabc\r\n0\r\n\r\n",
        "3\r\nabc\n0\r\n\r\n",
        "3\r\nabcd\r\n0\r\n\r\n",
        "3;ext\nabc\r\n0\r\n\r\n",
        "x\r\n",
        // A size past 64 bits.
        "10000000000000000\r\n",
        // A bare LF in the trailers: hyper would take what follows as
        // trailer lines.
        "0\r\n\n",
        "0\r\nTrailer: x\n\r\n",
        "0\r\nX: a\nb\r\n\r\n",
    ] {
        let input = format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}{GET}");
        // The chunked request was judged; the GET behind it never is.
        assert_eq!(heads(input.as_bytes()), refused_after(1), "{body:?}");
    }
}

#[test]
fn a_head_past_the_limit_is_refused() {
    let mut framing = Framing::new(true);
    let mut sum = framing.feed(b"GET / HTTP/1.1\r\n");
    let line = format!("X: {}\r\n", "a".repeat(1 << 16));
    while !sum.refuse_rest {
        sum = add(sum, framing.feed(line.as_bytes()));
    }
    assert_eq!(sum, refused_after(0));
    assert!(framing.line.capacity() == 0);
    let long = format!(
        "POST / HTTP/1.1\r\nTransfer-Encoding: {}chunked\r\n\r\n",
        "gzip, ".repeat(200)
    );
    assert_eq!(heads(long.as_bytes()), refused_after(0));
}

#[test]
fn an_http2_preface_turns_the_following_off() {
    let mut framing = Framing::new(true);
    let preface = Heads {
        http2: true,
        ..Heads::default()
    };
    assert_eq!(framing.feed(&H2_PREFACE[..10]), Heads::default());
    assert_eq!(framing.feed(&H2_PREFACE[10..]), preface);
    assert_eq!(framing.feed(GET.as_bytes()), Heads::default());
    // Starting like the preface, then HTTP/1 after all.
    assert_eq!(heads(b"PRI /x HTTP/1.1\r\n\r\n"), clean(1));
    assert_eq!(Framing::new(false).feed(GET.as_bytes()), Heads::default());
}
