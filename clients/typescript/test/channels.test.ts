// Reading MPP session channels against a real Teller, started by
// tests/e2e/test_client_typescript.py (test_typescript_client_reads_channels),
// which records the channels and signs the vouchers and passes their ids here.
import assert from "node:assert/strict";
import { test } from "node:test";
import { InvalidArgument, NotFound, TellerClient } from "../src/index";

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through tests/e2e/test_client_typescript.py`);
  return v;
};

const teller = new TellerClient(env("TELLER_TARGET"), env("TELLER_TOKEN"));
const CHANNEL = env("CHANNEL_ID"); // deposit 100, vouchers for 10, 35 and 75 in total
const NEWER = env("NEWER_CHANNEL_ID"); // opened later, closed, no vouchers
const THEIRS = env("OTHER_TENANT_CHANNEL_ID");

test("listChannels: the tenant's channels, newest first, by state, paged", async () => {
  const all = await teller.listChannels();
  assert.deepEqual(all.channels.map((c) => [c.id, c.state]), [[NEWER, "closed"], [CHANNEL, "open"]]);
  assert.equal(all.nextPageToken, "");
  const c = all.channels[1];
  assert.deepEqual([c.deposit, c.spent, c.remaining], [100n, 75n, 25n]);
  assert.match(c.channelId, /^0x[0-9a-f]{64}$/);
  assert.equal(c.createdAtMs, 1);
  const open = await teller.listChannels({ state: "open" });
  assert.deepEqual(open.channels.map((x) => x.id), [CHANNEL]);
  const first = await teller.listChannels({ pageSize: 1 });
  assert.deepEqual(first.channels.map((x) => x.id), [NEWER]);
  const rest = await teller.listChannels({ pageSize: 1, pageToken: first.nextPageToken });
  assert.deepEqual(rest.channels.map((x) => x.id), [CHANNEL]);
  await assert.rejects(teller.listChannels({ state: "settled" }), (e: unknown) => e instanceof InvalidArgument);
});

test("getChannel: the channel and its vouchers, highest total first, paged", async () => {
  const page = await teller.getChannel(CHANNEL, { pageSize: 2 });
  assert.equal(page.channel.id, CHANNEL);
  assert.equal(page.channel.spent, 75n);
  assert.deepEqual(page.vouchers.map((v) => v.cumulative), [75n, 35n]);
  assert.ok(page.vouchers.every((v) => /^0x[0-9a-f]{130}$/.test(v.signature) && v.createdAtMs > 0));
  const rest = await teller.getChannel(CHANNEL, { pageToken: page.nextPageToken });
  assert.deepEqual(rest.vouchers.map((v) => v.cumulative), [10n]);
  assert.equal(rest.nextPageToken, "");
  const none = await teller.getChannel(NEWER);
  assert.deepEqual([none.vouchers, none.channel.state], [[], "closed"]);
});

test("another tenant's channel is NotFound", async () => {
  await assert.rejects(teller.getChannel(THEIRS), (e: unknown) => e instanceof NotFound);
});
