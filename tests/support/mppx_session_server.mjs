// mppx's session server (TIP-1034 v2 payment channels) on node:http, for Teller's
// tests: the counterparty a payer opens channels with. Test use only; loopback only.
//
//   node mppx_session_server.mjs '<json config>'
//
// config: {rpcUrl, chainId, realm, secretKey, currency, escrowContract, serverKey,
//          recipient, amount, suggestedDeposit, unitType}
//   rpcUrl is the escrow proxy (testbed/escrow_proxy.py), not anvil itself: the test
//   escrow needs the proxy's two emulated precompile privileges.
//   serverKey (an anvil dev key) is the channel's operator: it sends the settle/close
//   transactions (mppx requires their sender to be the payee or the operator), so the
//   payee `recipient` pays no fees and its balance moves only by what the channel pays it.
// Route: any path. Each request costs `amount` (display units, 6 decimals) from the channel; the
// response is JSON {paid: true, n} with mppx's Payment-Receipt header.
// Prints "listening <port>" once it serves; mppx's errors go to stderr.
import * as http from 'node:http'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const pinned = createRequire(join(root, 'tools', 'chain', 'package.json'))
const load = (name) => import(pathToFileURL(pinned.resolve(name)).href)
const { Mppx, tempo } = await load('mppx/server')
const { createClient, http: httpTransport } = await load('viem')
const { privateKeyToAccount } = await load('viem/accounts')
const { tempo: tempoChain } = await load('viem/tempo/chains')

const config = JSON.parse(process.argv[2])
const chain = { ...tempoChain, id: config.chainId }
const account = privateKeyToAccount(config.serverKey)
const getClient = () => createClient({ chain, transport: httpTransport(config.rpcUrl), account })

const method = tempo.session({
  account, getClient, chainId: config.chainId, currency: config.currency, recipient: config.recipient,
  escrowContract: config.escrowContract, operator: account.address, decimals: 6, unitType: config.unitType ?? 'request',
  amount: config.amount, ...(config.suggestedDeposit ? { suggestedDeposit: config.suggestedDeposit } : {}),
})
const mppx = Mppx.create({ methods: [method], realm: config.realm, secretKey: config.secretKey })
let served = 0

// One stderr line per credential received ("mppx-session: credential <json>") with the
// decoded payload minus signatures and transactions: what a payer sent, as the tests see it.
function trace(req) {
  const auth = req.headers.authorization
  if (!auth?.startsWith('Payment ')) return
  try {
    const credential = JSON.parse(Buffer.from(auth.slice(8), 'base64url').toString())
    const { signature, transaction, descriptor, ...rest } = credential.payload ?? {}
    console.error(`mppx-session: credential ${JSON.stringify({ ...rest, source: credential.source,
      challengeKeys: Object.keys(credential.challenge ?? {}), method: req.method,
      hasSignature: Boolean(signature), hasTransaction: Boolean(transaction), hasDescriptor: Boolean(descriptor) })}`)
  } catch (error) {
    console.error(`mppx-session: undecodable credential: ${error}`)
  }
}

const server = http.createServer(async (req, res) => {
  trace(req)
  try {
    const result = await Mppx.toNodeListener(mppx.session({ amount: config.amount, unitType: config.unitType ?? 'request' }))(req, res)
    if (result.status === 402) {
      console.error(`mppx-session: 402 ${req.method} ${req.url} auth=${req.headers.authorization ? 'yes' : 'no'} sent=${res.statusCode}`)

      return
    }
    if (res.writableEnded) return
    served += 1
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ paid: true, n: served }))
  } catch (error) {
    console.error(`mppx-session: error on ${req.url}:`, error)
    if (!res.headersSent) res.writeHead(500)
    res.end()
  }
})

server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`)
})
