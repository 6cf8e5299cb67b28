//! A throwaway PostgreSQL cluster (placeholder until the testbed lands).
