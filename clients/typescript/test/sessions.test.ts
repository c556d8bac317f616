// Metered MPP session streams and closeChannel against a real Teller and mppx's own
// session server (TIP-1034 v2 on a local Tempo chain behind the escrow proxy), started
// by tests/e2e/test_client_typescript.py (test_typescript_client_streams_a_metered_session).
import assert from "node:assert/strict";
import { test } from "node:test";
import { LimitExceeded, TellerClient } from "../src/index";

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through tests/e2e/test_client_typescript.py`);
  return v;
};

const teller = new TellerClient(env("TELLER_TARGET"), env("TELLER_TOKEN"));
const WALLET = env("TELLER_WALLET_ID");
const SERVER = env("SESSION_URL"); // mppx's session server: /stream/K is K metered SSE events
const PRICE = BigInt(env("PRICE"));

/** The data of each `event: message` in an SSE body, as mppx writes them. */
const messages = (body: string): string[] =>
  body.split("\n\n").filter((b) => b.startsWith("event: message\n")).map((b) => b.split("\n")[1].slice(6));

test("payStream: a metered stream arrives chunk by chunk while Teller pays its vouchers", async () => {
  const paid = await teller.payStream(`${SERVER}/stream/12`, { walletId: WALLET, maxStreamAmount: 20n * PRICE });
  assert.equal(paid.response.status, 200);
  assert.match(new Map(paid.response.headers).get("content-type") ?? "", /^text\/event-stream/);
  const pieces: Buffer[] = [];
  let firstTokenAfter = -1;
  for await (const chunk of paid.chunks) {
    pieces.push(chunk);
    if (firstTokenAfter < 0 && Buffer.concat(pieces).toString().includes("data: token 1\n")) firstTokenAfter = pieces.length;
  }
  const body = Buffer.concat(pieces).toString();
  assert.deepEqual(messages(body), Array.from({ length: 12 }, (_, i) => `token ${i + 1}`));
  assert.ok(firstTokenAfter > 0 && firstTokenAfter < pieces.length, "the first token came before the stream ended");
  assert.ok(body.includes("event: payment-receipt"));
  const [channel] = (await teller.listChannels({ state: "open" })).channels;
  assert.equal(channel.spent, 12n * PRICE);
});

test("maxStreamAmount: the stream ends with LimitExceeded stream_cap at the cap", async () => {
  const paid = await teller.payStream(`${SERVER}/stream/50`, { walletId: WALLET, maxStreamAmount: 3n * PRICE });
  const pieces: Buffer[] = [];
  await assert.rejects(async () => {
    for await (const chunk of paid.chunks) pieces.push(chunk);
  }, (e: unknown) => e instanceof LimitExceeded && e.reason === "stream_cap");
  // The request's own voucher paid the first token, the stream's three vouchers the next three.
  assert.deepEqual(messages(Buffer.concat(pieces).toString()), ["token 1", "token 2", "token 3", "token 4"]);
  const [channel] = (await teller.listChannels({ state: "open" })).channels;
  assert.equal(channel.spent, 12n * PRICE + 4n * PRICE);
});

test("closeChannel: the final voucher closes the channel on chain", async () => {
  const [channel] = (await teller.listChannels({ state: "open" })).channels;
  // The stream route's own mppx instance holds the channel (the server keeps one per route).
  const closed = await teller.closeChannel(channel.id, `${SERVER}/stream/1`);
  assert.equal(closed.id, channel.id);
  assert.equal(closed.cumulative, channel.spent);
  assert.equal(closed.status, 204);
  assert.match(String(closed.receipt?.txHash), /^0x[0-9a-f]{64}$/);
  const after = await teller.getChannel(channel.id);
  assert.equal(after.channel.state, "closing");
});
