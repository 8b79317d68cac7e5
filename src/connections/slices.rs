//! Response data handed to HTTP/2 in slices of one frame, each in an
//! allocation of its own. HTTP/2 takes a chunk of a response body whole
//! once its stream's window allows a single byte, and keeps it until the
//! window has let all of it through; a message of 1 MiB would sit there,
//! outside every budget, behind a reader that opens its window a byte at a
//! time. In slices, a stream asks for its next message (and gives back the
//! last one's send grant, see [`crate::replica::outgoing`]) only once
//! HTTP/2 holds no more than the last slice of it, and that slice does not
//! keep the message's allocation alive.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};

/// Largest slice: HTTP/2's default frame size.
pub const SLICE_BYTES: usize = 16 << 10;

/// A response whose body comes out in slices (for
/// `tower::util::MapResponseLayer`).
pub fn sliced<B>(response: http::Response<B>) -> http::Response<Sliced<B>> {
    response.map(|body| Sliced {
        body,
        rest: Bytes::new(),
    })
}

pin_project_lite::pin_project! {
    /// A response body whose data comes out in slices.
    pub struct Sliced<B> {
        #[pin]
        body: B,
        // What is left of the chunk being sliced.
        rest: Bytes,
    }
}

impl<B: Body<Data = Bytes>> Body for Sliced<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if this.rest.is_empty() {
            match std::task::ready!(this.body.poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.len() > SLICE_BYTES => *this.rest = data,
                    Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        }
        let take = this.rest.len().min(SLICE_BYTES);
        let slice = Bytes::copy_from_slice(&this.rest[..take]);
        this.rest.advance(take);
        Poll::Ready(Some(Ok(Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.rest.is_empty() {
            true => self.body.size_hint(),
            false => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of one chunk.
    struct One(Option<Bytes>);

    impl Body for One {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }

    #[tokio::test]
    async fn chunks_come_out_in_slices_of_their_own() {
        let chunk = Bytes::from(vec![7u8; 3 * SLICE_BYTES + 5]);
        let mut body = Box::pin(Sliced {
            body: One(Some(chunk.clone())),
            rest: Bytes::new(),
        });
        let mut frames = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        assert!(body.is_end_stream());
        let sizes: Vec<usize> = frames.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [SLICE_BYTES, SLICE_BYTES, SLICE_BYTES, 5]);
        assert_eq!(frames.concat(), chunk.to_vec());
    }
}
