//! The wait for a replica's answer, which outlives the client that asked for it.
//!
//! When a client hangs up before its response starts, hyper drops the request's handler, and with it the wait
//! for the replica. The replica does not know: a sync worker goes on with the request until it answers. Were
//! the request's slot freed at once, the next request sent there would wait inside the replica, behind the
//! abandoned one (wrk's last requests of a run made 50-170 ms waits that way). So the wait goes on in a task of
//! its own, holding the slot, until the replica answers or the connection's response timeout ends it. The
//! answer is then dropped, which closes that upstream connection.
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// `wait` for a replica's answer, with `held` (the request's slot, its connection) kept until it comes, even if
/// this future is dropped first. Resolves to the answer and `held`.
pub struct Answer<F, H>
where
    F: Future + Send + 'static,
    H: Send + 'static,
{
    pending: Option<(Pin<Box<F>>, H)>,
}

impl<F, H> Answer<F, H>
where
    F: Future + Send + 'static,
    H: Send + 'static,
{
    pub fn new(wait: F, held: H) -> Answer<F, H> {
        Answer {
            pending: Some((Box::pin(wait), held)),
        }
    }
}

// The wait is boxed and `held` is never pinned: moving an `Answer` moves neither.
impl<F, H> Unpin for Answer<F, H>
where
    F: Future + Send + 'static,
    H: Send + 'static,
{
}

impl<F, H> Future for Answer<F, H>
where
    F: Future + Send + 'static,
    H: Send + 'static,
{
    type Output = (F::Output, H);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Once resolved it stays pending; nobody polls a finished future.
        let Some((wait, _)) = self.pending.as_mut() else {
            return Poll::Pending;
        };
        let answer = std::task::ready!(wait.as_mut().poll(cx));
        match self.pending.take() {
            Some((_, held)) => Poll::Ready((answer, held)),
            None => Poll::Pending,
        }
    }
}

impl<F, H> Drop for Answer<F, H>
where
    F: Future + Send + 'static,
    H: Send + 'static,
{
    fn drop(&mut self) {
        let Some((wait, held)) = self.pending.take() else {
            return;
        };
        // Outside a runtime (a worker shutting down) there is no one left to send the replica work.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _answer = wait.await;
                drop(held);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn an_answer_dropped_before_it_comes_holds_on_until_it_comes() {
        let released = Arc::new(AtomicBool::new(false));
        let (reply, replied) = tokio::sync::oneshot::channel::<u8>();
        let answer = Answer::new(replied, Flag(Arc::clone(&released)));
        drop(answer);
        tokio::task::yield_now().await;
        assert!(
            !released.load(Ordering::SeqCst),
            "released before the answer"
        );
        reply.send(7).unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            released.load(Ordering::SeqCst),
            "still held after the answer"
        );
    }

    #[tokio::test]
    async fn an_awaited_answer_gives_back_what_it_held() {
        let released = Arc::new(AtomicBool::new(false));
        let answer = Answer::new(async { 5 }, Flag(Arc::clone(&released)));
        let (value, held) = answer.await;
        assert_eq!(value, 5);
        assert!(!released.load(Ordering::SeqCst));
        drop(held);
        assert!(released.load(Ordering::SeqCst));
    }
}
