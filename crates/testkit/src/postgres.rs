//! Throwaway PostgreSQL databases.

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

/// The server's administrative database: `TESTKIT_POSTGRES` if set, else
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn postgres_admin_url() -> String {
    std::env::var("TESTKIT_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database with a random name on the server of [`postgres_admin_url`], dropped on `Drop`.
pub struct TestPostgres {
    /// Its connection URL.
    pub url: String,
    name: String,
}

impl TestPostgres {
    /// Creates the database.
    pub async fn new() -> Self {
        let admin = postgres_admin_url();
        let name = format!("testkit_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must answer at {admin}: {e}"));
        conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL through another port of 127.0.0.1 (a [`TcpProxy`](crate::TcpProxy) in front of
    /// the server), as the user of the administrative URL.
    pub fn url_via(&self, port: u16) -> String {
        let admin = postgres_admin_url();
        let user = admin
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map_or("postgres", |(user, _)| user);
        format!("postgres://{user}@127.0.0.1:{port}/{}", self.name)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside a runtime in async tests: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&postgres_admin_url()).await {
                    let _ = c
                        .execute(AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}
