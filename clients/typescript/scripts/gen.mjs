// Generates src/gen from ../../proto with ts-proto (pinned in package.json),
// run by protoc from grpcio-tools (pinned in Teller's pyproject.toml dev extras).
// PYTHON names the interpreter that has grpcio-tools; default: Teller's .venv.
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(dirname(fileURLToPath(import.meta.url)));
const root = resolve(here, "..", "..");
const protoDir = join(root, "proto");
const out = join(here, "src", "gen");
const python = process.env.PYTHON || join(root, process.env.TELLER_VENV || ".venv", "bin", "python");
const plugin = join(here, "node_modules", ".bin", "protoc-gen-ts_proto");
const protos = readdirSync(join(protoDir, "teller", "v1"))
  .filter((f) => f.endsWith(".proto"))
  .sort()
  .map((f) => join(protoDir, "teller", "v1", f));

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
execFileSync(python, [
  "-m", "grpc_tools.protoc",
  `-I${protoDir}`,
  `--plugin=protoc-gen-ts_proto=${plugin}`,
  `--ts_proto_out=${out}`,
  "--ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,env=node,forceLong=string,oneof=unions-value",
  ...protos,
], { stdio: "inherit" });
