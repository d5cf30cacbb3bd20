//! Statements pipelined in one transaction fail together: once one fails,
//! those after it fail only with "current transaction is aborted". Joined,
//! they could report that echo instead of the cause (a full disk, a lock
//! timeout), and the cause decides whether a retry can help. These joins
//! report the cause.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use super::error::DbError;

/// An error that may only echo another statement's.
pub trait Echo {
    /// Whether it says only that an earlier statement failed.
    fn is_echo(&self) -> bool;
}

impl Echo for DieselError {
    fn is_echo(&self) -> bool {
        match self {
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
                info.message().contains("current transaction is aborted")
            }
            _ => false,
        }
    }
}

impl Echo for DbError {
    fn is_echo(&self) -> bool {
        match self {
            DbError::Database { source, .. } => source.is_echo(),
            _ => false,
        }
    }
}

/// Both results, or the error that caused the other's.
pub fn both<A, B, E: Echo>(a: Result<A, E>, b: Result<B, E>) -> Result<(A, B), E> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(first), Err(second)) if first.is_echo() => Err(second),
        (Err(first), Err(_)) => Err(first),
    }
}

/// Every result, or the first error that is not an echo (else the first).
pub fn all<T, E: Echo>(results: Vec<Result<T, E>>) -> Result<Vec<T>, E> {
    let mut values = Vec::with_capacity(results.len());
    let mut echo = None;
    for r in results {
        match r {
            Ok(v) => values.push(v),
            Err(e) if e.is_echo() => {
                echo.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match echo {
        Some(e) => Err(e),
        None => Ok(values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct E(&'static str);

    impl Echo for E {
        fn is_echo(&self) -> bool {
            self.0 == "aborted"
        }
    }

    #[test]
    fn the_cause_wins_over_its_echo_in_any_order() {
        assert_eq!(
            both::<(), (), _>(Err(E("aborted")), Err(E("disk full"))),
            Err(E("disk full"))
        );
        assert_eq!(
            both::<(), (), _>(Err(E("disk full")), Err(E("aborted"))),
            Err(E("disk full"))
        );
        assert_eq!(
            all::<(), _>(vec![Ok(()), Err(E("aborted")), Err(E("disk full"))]),
            Err(E("disk full"))
        );
        assert_eq!(all::<(), _>(vec![Err(E("aborted"))]), Err(E("aborted")));
        assert_eq!(all::<u8, E>(vec![Ok(1), Ok(2)]), Ok(vec![1, 2]));
    }
}
