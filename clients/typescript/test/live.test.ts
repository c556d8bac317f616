// Against a real Teller and the counterparties Teller's suite runs (the x402 SDK
// server and facilitator on anvil, pympp's Tempo server on a Tempo anvil), all
// started by tests/e2e/test_client_typescript.py, which passes their addresses in
// the environment and runs `node --test` on the compiled tests.
import assert from "node:assert/strict";
import { createServer, Server, Socket } from "node:net";
import { test } from "node:test";
import axios, { type AxiosResponse } from "axios";
import { Server as GrpcServer, ServerCredentials, status as grpcStatus, type sendUnaryData, type ServerUnaryCall } from "@grpc/grpc-js";
import {
  Cancelled, DeadlineExceeded, LimitExceeded, NO_RETRY, TellerClient, Unavailable, paymentInfo, withTeller, wrapFetch,
} from "../src/index";
import { PaymentServiceService, type SignRequest, type SignResponse } from "../src/gen/teller/v1/payment";

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through tests/e2e/test_client_typescript.py`);
  return v;
};

const TARGET = env("TELLER_TARGET");
const TOKEN = env("TELLER_TOKEN");
const WALLET = env("TELLER_WALLET_ID");
const PRICE = BigInt(env("PRICE"));

interface Counterparty { url: string; rpc: string; token: string; payee: string }
const SERVERS: Record<string, Counterparty> = {
  x402: { url: env("X402_URL"), rpc: env("EVM_RPC"), token: env("EVM_TOKEN"), payee: env("X402_PAYEE") },
  mpp: { url: env("MPP_URL"), rpc: env("TEMPO_RPC"), token: env("TEMPO_TOKEN"), payee: env("MPP_RECIPIENT") },
};

async function balance(c: Counterparty, owner: string): Promise<bigint> {
  const data = "0x70a08231" + owner.toLowerCase().replace(/^0x/, "").padStart(64, "0"); // balanceOf(address)
  const r = await fetch(c.rpc, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_call", params: [{ to: c.token, data }, "latest"] }),
  });
  const doc = (await r.json()) as { result: string };
  return BigInt(doc.result);
}

/** A TCP proxy in front of Teller that can be cut, as a deploy or a crash would. */
async function proxyTo(target: string): Promise<{ target: string; cut: () => void }> {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const sockets: Socket[] = [];
  const server: Server = createServer((inbound) => {
    const outbound = new Socket();
    outbound.connect(port, host);
    inbound.pipe(outbound).pipe(inbound);
    inbound.on("error", () => outbound.destroy());
    outbound.on("error", () => inbound.destroy());
    sockets.push(inbound, outbound);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const address = server.address();
  assert(address && typeof address === "object");
  return {
    target: `127.0.0.1:${address.port}`,
    cut: () => {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

/** A port that accepts connections and never answers: a hung Teller. */
async function blackHole(): Promise<{ target: string; close: () => void }> {
  const held: Socket[] = [];
  const server = createServer((s) => held.push(s));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const address = server.address();
  assert(address && typeof address === "object");
  return { target: `127.0.0.1:${address.port}`, close: () => { server.close(); held.forEach((s) => s.destroy()); } };
}

const teller = new TellerClient(TARGET, TOKEN);

test("typed calls: listWallets, getSpend, sign and a typed denial", async () => {
  const wallets = await teller.listWallets();
  assert.deepEqual(wallets.map((w) => w.id), [WALLET]);
  const spend = await teller.getSpend();
  assert.ok(Array.isArray(spend)); // no budgets in this policy: no windows
  await assert.rejects(
    teller.sign({ status: 402, headers: [], url: "https://example.com/x", walletId: WALLET }),
    (e: unknown) => e instanceof Error && e.name === "InvalidArgument" && /no payment requirements/.test(e.message),
  );
  const probe = await fetch(`${SERVERS.x402.url}/weather`);
  assert.equal(probe.status, 402);
  await assert.rejects(
    teller.sign({ status: 402, headers: [...probe.headers], body: "", url: probe.url, walletId: WALLET, maxAmount: 1 }),
    (e: unknown) => e instanceof LimitExceeded && e.reason !== "",
  );
});

for (const protocol of ["x402", "mpp"] as const) {
  const c = SERVERS[protocol];

  test(`${protocol}: wrapFetch pays, and concurrent retries of one request pay once`, async () => {
    const pay = wrapFetch(fetch, teller, WALLET);
    const before = await balance(c, c.payee);
    const key = `ts-order-${protocol}-${Date.now()}`;
    const answers = await Promise.all([0, 1, 2, 3].map(() =>
      pay(`${c.url}/weather`, { headers: { "Idempotency-Key": key } })));
    assert.ok(answers.some((a) => a.status === 200), answers.map((a) => a.status).join(","));
    const ids = new Set(answers.map((a) => paymentInfo(a)?.paymentId));
    assert.equal(ids.size, 1);
    // The same Request object sent again: a retry of one logical request.
    const request = new Request(`${c.url}/weather`);
    const first = await pay(request);
    const again = await pay(request);
    assert.equal(first.status, 200);
    assert.equal(paymentInfo(again)?.paymentId, paymentInfo(first)?.paymentId);
    assert.equal(await balance(c, c.payee) - before, 2n * PRICE);
    const receipt = paymentInfo(first)?.receipt;
    assert.ok(receipt, "the server's receipt is decoded");
    assert.equal(paymentInfo(first)?.record?.state, "settled");
    const record = await teller.getPayment(paymentInfo(first)!.paymentId);
    assert.equal(record.state, "settled");
    assert.equal(record.amount, PRICE);
    assert.equal(record.protocol, protocol);
    assert.match(record.txHash, /^0x[0-9a-f]{64}$/);
  });

  test(`${protocol}: the axios interceptor pays, and concurrent retries pay once`, async () => {
    const http = axios.create();
    withTeller(http, teller, WALLET);
    const before = await balance(c, c.payee);
    const key = `ts-axios-${protocol}-${Date.now()}`;
    const answers = await Promise.allSettled([0, 1, 2, 3].map(() =>
      http.get(`${c.url}/weather`, { headers: { "Idempotency-Key": key } })));
    const ok = answers.filter((a) => a.status === "fulfilled");
    assert.ok(ok.length >= 1, JSON.stringify(answers.map((a) => a.status)));
    const paid = (ok[0] as PromiseFulfilledResult<AxiosResponse>).value;
    assert.equal(paid.status, 200);
    assert.equal(paymentInfo(paid)?.idempotencyKey, key);
    assert.equal(await balance(c, c.payee) - before, PRICE);
  });

  test(`${protocol}: a paid 200 survives a failing recordOutcome`, async () => {
    const proxy = await proxyTo(TARGET);
    const flaky = new TellerClient(proxy.target, TOKEN, { timeoutMs: 2000 });
    const errors: Error[] = [];
    // The network to the resource server; once the paid retry's answer is in, Teller is cut off.
    const cutAfterRetry: typeof fetch = async (input, init) => {
      const r = await fetch(input, init);
      const headers = new Headers(init?.headers);
      if (headers.has("payment-signature") || headers.has("authorization")) proxy.cut();
      return r;
    };
    const pay = wrapFetch(cutAfterRetry, flaky, WALLET, { onOutcomeError: (e) => errors.push(e) });
    const before = await balance(c, c.payee);
    const r = await pay(`${c.url}/weather`);
    assert.equal(r.status, 200);
    assert.ok((await r.text()).length > 0);
    const info = paymentInfo(r);
    assert.ok(info && info.record === undefined);
    assert.ok(info.outcomeError instanceof Unavailable || info.outcomeError instanceof DeadlineExceeded, String(info.outcomeError));
    assert.equal(errors.length, 1);
    assert.equal(await balance(c, c.payee) - before, PRICE);
    flaky.close();
  });
}

test("a hung Teller fails each call within its deadline", async () => {
  const hole = await blackHole();
  const dead = new TellerClient(hole.target, TOKEN, { timeoutMs: 1000, payTimeoutMs: 1000 });
  for (const call of [
    () => dead.listWallets(),
    () => dead.sign({ status: 402, headers: [], url: "https://example.com/", walletId: WALLET, idempotencyKey: "k" }),
    () => dead.pay(`${SERVERS.x402.url}/weather`, { walletId: WALLET }),
    () => wrapFetch(fetch, dead, WALLET)(`${SERVERS.x402.url}/weather`),
  ]) {
    const start = Date.now();
    await assert.rejects(call(), (e: unknown) => e instanceof DeadlineExceeded);
    const took = Date.now() - start;
    assert.ok(took >= 900 && took < 2500, `took ${took} ms`);
  }
  dead.close();
  hole.close();
});

test("no Teller at all: Unavailable, retried only for idempotent calls", async () => {
  const hole = await blackHole();
  const port = hole.target.split(":")[1];
  hole.close(); // nothing listens there now
  const gone = new TellerClient(`127.0.0.1:${port}`, TOKEN, { timeoutMs: 3000 });
  let start = Date.now();
  await assert.rejects(gone.listWallets(), (e: unknown) => e instanceof Unavailable);
  assert.ok(Date.now() - start >= 100, "retried after a pause");
  assert.ok(Date.now() - start < 3000);
  const once = new TellerClient(`127.0.0.1:${port}`, TOKEN, { timeoutMs: 3000, retry: NO_RETRY });
  start = Date.now();
  await assert.rejects(once.listWallets(), (e: unknown) => e instanceof Unavailable);
  assert.ok(Date.now() - start < 100);
  gone.close();
  once.close();
});

test("a sign cancelled by a stopping worker is retried under one key per call", async () => {
  // A PaymentService that answers each key's first attempt with CANCELLED, as a
  // gRPC server that shuts down does to calls it has not started (grpc/grpc#41785).
  const keys: string[] = [];
  const server = new GrpcServer();
  server.addService(PaymentServiceService, {
    sign: (call: ServerUnaryCall<SignRequest, SignResponse>, done: sendUnaryData<SignResponse>) => {
      keys.push(call.request.idempotencyKey);
      if (keys.filter((k) => k === call.request.idempotencyKey).length === 1) {
        done({ code: grpcStatus.CANCELLED, details: "CANCELLED" });
        return;
      }
      done(null, { headerName: "X-PAYMENT", headerValue: "proof", paymentId: "pay_1", requirement: undefined, headers: [] });
    },
  } as never);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  const fake = new TellerClient(`127.0.0.1:${port}`, TOKEN, { timeoutMs: 5000 });
  const args = { status: 402, headers: [], url: "https://example.com/", walletId: WALLET };
  for (let i = 0; i < 2; i++) assert.equal((await fake.sign(args)).paymentId, "pay_1");
  assert.equal((await fake.sign({ ...args, idempotencyKey: "order-7" })).paymentId, "pay_1");
  const [first, firstRetry, second, secondRetry, own, ownRetry] = keys;
  assert.equal(keys.length, 6);
  assert.ok(first === firstRetry && second === secondRetry && first !== second && /^call_[0-9a-f]{32}$/.test(first));
  assert.ok(own === "order-7" && ownRetry === "order-7");
  const once = new TellerClient(`127.0.0.1:${port}`, TOKEN, { timeoutMs: 5000, retry: NO_RETRY });
  await assert.rejects(once.sign(args), (e: unknown) => e instanceof Cancelled);
  fake.close();
  once.close();
  server.forceShutdown();
});

test.after(() => teller.close());
