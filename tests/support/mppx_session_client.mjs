// mppx's own session CLIENT as the reference payer, for Teller's tests: it proves
// the local counterparty (test escrow + proxy + mppx's session server) right before
// Teller is measured against it. Test use only; anvil dev keys only.
//
//   node mppx_session_client.mjs '<json config>'
//
// config: {rpcUrl, chainId, escrowContract, payerKey, url, requests, maxDeposit,
//          topUp?, closeAfter?}
//   Opens a channel (deposit maxDeposit, in display units), pays `requests` paid
//   requests (one voucher each), tops up by `topUp` (display units) if given, pays
//   `requests` more, and closes cooperatively unless closeAfter is false. With `stream`
//   (a URL of the server's /stream route) it first reads that metered SSE stream.
// Prints one JSON line: {channelId, cumulative, opened, closeReceipt, statuses}.
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const pinned = createRequire(join(root, 'tools', 'chain', 'package.json'))
const load = (name) => import(pathToFileURL(pinned.resolve(name)).href)
const { sessionManager } = await load('mppx/client')
const { createClient, http: httpTransport } = await load('viem')
const { privateKeyToAccount } = await load('viem/accounts')
const { tempo: tempoChain } = await load('viem/tempo/chains')

const config = JSON.parse(process.argv[2])
const chain = { ...tempoChain, id: config.chainId }
const account = privateKeyToAccount(config.payerKey)
const client = createClient({ chain, transport: httpTransport(config.rpcUrl), account })

const manager = sessionManager({
  account, client, escrow: config.escrowContract, decimals: 6, maxDeposit: config.maxDeposit,
  allowedChainIds: [config.chainId],
})
const statuses = []
async function pay(n) {
  for (let i = 0; i < n; i++) {
    const res = await manager.fetch(config.url)
    statuses.push(res.status)
    if (res.status !== 200) throw new Error(`paid request ${i} answered ${res.status}: ${await res.text()}`)
    await res.text()
  }
}
const out = {}
if (config.stream) {
  // The metered stream: mppx's client answers the server's need-voucher events itself.
  out.events = []
  for await (const data of await manager.sse(config.stream)) out.events.push(data)
}
await pay(config.requests)
out.channelId = manager.channelId
out.afterFirst = manager.cumulative.toString()
if (config.topUp) {
  const receipt = await manager.topUp(config.topUp)
  out.topUpReceipt = receipt ?? null
  await pay(config.requests)
}
out.cumulative = manager.cumulative.toString()
if (config.closeAfter !== false) {
  const receipt = await manager.close()
  out.closeReceipt = receipt ?? null
}
out.statuses = statuses
console.log(JSON.stringify(out, (_, v) => (typeof v === 'bigint' ? v.toString() : v)))
