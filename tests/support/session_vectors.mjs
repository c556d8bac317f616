// Cross-implementation vectors for MPP sessions on Tempo (TIP-1034 v2), computed
// with mppx's and viem's own functions, for tests/integration/test_mpp_session_vectors.py.
// Test use only.
//
//   node session_vectors.mjs < cases.json > results.json
//
// Each case: {key, payee, operator, token, salt, authorizedSigner, escrow, chainId,
//   deposit, cumulativeAmount, additionalDeposit, gas, gasPrice, validBefore, validAfter,
//   request: {amount, suggestedDeposit?, ...} (mppx server-side input, decimals applied here),
//   receipt: {challengeId, spent, units?, txHash?, required},
//   teller: {credentials: [header values], voucherSignature}}  (what Teller made, checked here)
// Each result: mppx's/viem's channel id, voucher digest and signature, calldata,
// expiring nonce hash and wire request, and whether mppx accepts Teller's credentials.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
// mppx and viem are pinned in tools/chain (installed by ./run test).
const pinned = createRequire(join(root, 'tools', 'chain', 'package.json'))
const load = (name) => import(pathToFileURL(pinned.resolve(name)).href)
const { Methods, Session } = await load('mppx/tempo')
const { Credential } = await load('mppx')
const { encodeFunctionData, hashTypedData, createClient, custom, maxUint256 } = await load('viem')
const { privateKeyToAccount } = await load('viem/accounts')
const { TxEnvelopeTempo } = await load('ox/tempo')

const { Chain, Channel, Protocol, Voucher, escrowAbi } = Session.Precompile
// signTypedData with a local account signs in process; the transport is never called.
const client = createClient({ transport: custom({ request: async () => { throw new Error('no RPC in vectors') } }) })

async function one(c) {
  const account = privateKeyToAccount(c.key)
  const deposit = BigInt(c.deposit)
  const openData = encodeFunctionData({
    abi: escrowAbi, functionName: 'open',
    args: [c.payee, c.operator, c.token, deposit, c.salt, c.authorizedSigner],
  })
  const envelope = TxEnvelopeTempo.from({
    chainId: c.chainId,
    calls: [{ to: c.escrow, data: openData, value: 0n }],
    gas: BigInt(c.gas), maxFeePerGas: BigInt(c.gasPrice), maxPriorityFeePerGas: BigInt(c.gasPrice),
    nonceKey: maxUint256, nonce: 0n, validBefore: c.validBefore, feeToken: c.token,
  })
  const expiringNonceHash = Channel.computeExpiringNonceHash(envelope, { sender: account.address })
  const descriptor = {
    payer: account.address, payee: c.payee, operator: c.operator, token: c.token, salt: c.salt,
    authorizedSigner: c.authorizedSigner, expiringNonceHash,
  }
  const channelId = Channel.computeId({ ...descriptor, chainId: c.chainId, escrow: c.escrow })
  const voucher = { channelId, cumulativeAmount: BigInt(c.cumulativeAmount) }
  const voucherDigest = hashTypedData({
    domain: Voucher.getVoucherDomain(c.escrow, c.chainId), types: Voucher.voucherTypes,
    primaryType: 'Voucher', message: voucher,
  })
  const voucherSignature = await Voucher.signVoucher(client, account, voucher, c.escrow, c.chainId)
  const tellerVoucherVerifies = Voucher.verifyVoucher(c.escrow, c.chainId,
    { ...voucher, signature: c.teller.voucherSignature }, Channel.resolveAuthorizedSigner(descriptor))
  const topUpData = encodeFunctionData({
    abi: escrowAbi, functionName: 'topUp', args: [descriptor, BigInt(c.additionalDeposit)],
  })
  const topUpEnvelope = TxEnvelopeTempo.from({
    chainId: c.chainId,
    calls: [{ to: c.escrow, data: topUpData, value: 0n }],
    gas: BigInt(c.gas), maxFeePerGas: BigInt(c.gasPrice), maxPriorityFeePerGas: BigInt(c.gasPrice),
    nonceKey: maxUint256, nonce: 0n, validBefore: c.validBefore, validAfter: c.validAfter, feeToken: c.token,
  })
  const topUpSigningPayload = TxEnvelopeTempo.encodeForSigning(topUpEnvelope)
  const requestCloseData = encodeFunctionData({ abi: escrowAbi, functionName: 'requestClose', args: [descriptor] })
  const withdrawData = encodeFunctionData({ abi: escrowAbi, functionName: 'withdraw', args: [descriptor] })
  // The wire request as mppx's server puts it in a challenge (its schema's output).
  const request = Methods.session.schema.request.parse({ decimals: 6, ...c.request })
  // Teller's credentials through mppx's own parsing and payload schema.
  const credentials = c.teller.credentials.map((header) => {
    try {
      const cred = Credential.deserialize(header)
      const payload = Methods.session.schema.credential.payload.parse(cred.payload)
      let voucherValid = null
      if ('signature' in payload)
        voucherValid = Voucher.verifyVoucher(c.escrow, c.chainId, Voucher.parseVoucherFromPayload(
          payload.channelId, payload.cumulativeAmount, payload.signature), account.address)
      let txExpiringNonceHash = null
      let txAccepted = null
      if ('transaction' in payload) {
        const tx = TxEnvelopeTempo.deserialize(payload.transaction)
        txExpiringNonceHash = Channel.computeExpiringNonceHash(tx, { sender: account.address })
        // mppx's server-side checks of the transaction (no chain needed): one call to the
        // escrow, the right calldata, and for an open the nonce hash of the payer recovered
        // from the signature (the zero expectedPayer is used only when none is recovered).
        const shared = {
          escrowContract: c.escrow, feePayer: false, serializedTransaction: payload.transaction,
          chainId: c.chainId, expectedCurrency: c.token, expectedChannelId: payload.channelId,
        }
        if (payload.action === 'open') {
          const r = Chain.validateOpenCredentialTransaction({
            ...shared, expectedPayer: '0x0000000000000000000000000000000000000000', expectedPayee: c.payee,
            expectedOperator: c.operator, expectedAuthorizedSigner: payload.authorizedSigner,
            expectedExpiringNonceHash: payload.descriptor.expiringNonceHash,
          })
          txAccepted = { payer: r.descriptor.payer, deposit: r.openDeposit.toString() }
        } else {
          Chain.validateTopUpCredentialTransaction({
            ...shared, descriptor: payload.descriptor, additionalDeposit: BigInt(payload.additionalDeposit),
          })
          txAccepted = { payer: tx.from ?? null }
        }
      }
      return { ok: true, action: payload.action, source: cred.source, voucherValid, txExpiringNonceHash, txAccepted,
               descriptorId: payload.descriptor
                 ? Channel.computeId({ ...payload.descriptor, chainId: c.chainId, escrow: c.escrow }) : null,
               channelId: payload.channelId }
    } catch (error) {
      return { ok: false, error: String(error?.message ?? error).slice(0, 400) }
    }
  })
  // What the server says during the session, as mppx's server formats it.
  const receipt = Protocol.createSessionReceipt({
    challengeId: c.receipt.challengeId, channelId, acceptedCumulative: BigInt(c.cumulativeAmount),
    spent: BigInt(c.receipt.spent), units: c.receipt.units, txHash: c.receipt.txHash,
  })
  const needVoucher = {
    channelId, requiredCumulative: c.receipt.required, acceptedCumulative: c.cumulativeAmount, deposit: c.deposit,
  }
  return {
    receiptHeader: Protocol.serializeSessionReceipt(receipt), receiptEvent: Protocol.formatReceiptEvent(receipt),
    needVoucherEvent: Protocol.formatNeedVoucherEvent(needVoucher),
    needVoucherFrame: Protocol.formatNeedVoucherMessage(needVoucher),
    payer: account.address, openData, expiringNonceHash, channelId, voucherDigest, voucherSignature,
    tellerVoucherVerifies, topUpData, topUpSigningPayload, requestCloseData, withdrawData, request, credentials,
    signingPayload: TxEnvelopeTempo.encodeForSigning(envelope),
  }
}

const cases = JSON.parse(readFileSync(0, 'utf8'))
const out = []
for (const c of cases) out.push(await one(c))
process.stdout.write(JSON.stringify(out))
