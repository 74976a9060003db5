//! Integration tests: both servers on 127.0.0.1 with fake backends, driven over real HTTP and gRPC.

mod fixtures;
mod grpc;
mod openai;
mod rest;
mod shutdown;
